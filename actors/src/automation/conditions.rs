//! Conditions: `field × operator × value`, evaluated as pure code. Text comparisons fold case
//! and accents unless a condition says `case_sensitive`; regexes are compiled once, when the
//! condition is, and their compiled size is capped; times of day and weekdays are read in the
//! tenant's time zone.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveTime, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

/// The longest regex pattern a condition may hold, in characters.
pub const MAX_PATTERN_CHARS: usize = 500;
/// The compiled size a regex may take (its NFA and its lazy DFA each), in bytes.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// The most values an `any` or `in` list may hold.
pub const MAX_LIST: usize = 200;

/// A condition as a client writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub field: String,
    pub op: String,
    #[serde(default)]
    pub value: Value,
    #[serde(default)]
    pub case_sensitive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Contains,
    Equals,
    StartsWith,
    EndsWith,
    Regex,
    /// The field contains any of the listed words (a keyword list).
    Any,
    /// The field equals one of the listed values.
    In,
    /// The field lies between two bounds, inclusive (times of day may wrap past midnight).
    Between,
}

impl Op {
    pub const NAMES: &[&str] = &[
        "contains",
        "equals",
        "starts_with",
        "ends_with",
        "regex",
        "any",
        "in",
        "between",
    ];

    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "contains" => Op::Contains,
            "equals" => Op::Equals,
            "starts_with" => Op::StartsWith,
            "ends_with" => Op::EndsWith,
            "regex" => Op::Regex,
            "any" => Op::Any,
            "in" => Op::In,
            "between" => Op::Between,
            _ => return None,
        })
    }
}

/// What a condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The message's text (or caption).
    Text,
    /// The sender's phone number.
    From,
    /// The message's type (`text`, `image`, …).
    Type,
    /// One of the chat's labels.
    ChatLabel,
    /// `HH:MM` in the tenant's time zone.
    TimeOfDay,
    /// `mon` … `sun` in the tenant's time zone.
    Weekday,
    /// `card.moved`: the name of the column the card went to.
    Column,
    /// `card.moved`: the name of the card's board.
    Board,
    /// A flow variable (branch conditions only).
    Variable(String),
}

impl Field {
    pub const NAMES: &[&str] = &[
        "text",
        "from",
        "type",
        "chat_label",
        "time_of_day",
        "weekday",
        "column",
        "board",
    ];

    /// A trigger's field: one of [`Field::NAMES`].
    pub fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "text" => Field::Text,
            "from" => Field::From,
            "type" => Field::Type,
            "chat_label" => Field::ChatLabel,
            "time_of_day" => Field::TimeOfDay,
            "weekday" => Field::Weekday,
            "column" => Field::Column,
            "board" => Field::Board,
            _ => return None,
        })
    }

    /// A branch's field: a trigger's field, or a variable (`vars.name` or plain `name`).
    pub fn parse_with_variables(s: &str) -> Option<Field> {
        if let Some(f) = Field::parse(s) {
            return Some(f);
        }
        let name = s.strip_prefix("vars.").unwrap_or(s);
        crate::automation::flow::is_variable_name(name).then(|| Field::Variable(name.to_owned()))
    }
}

/// Why a condition could not be compiled: the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConditionError {
    /// `field`, `op` or `value`.
    pub part: &'static str,
    pub message: String,
}

fn bad(part: &'static str, message: impl Into<String>) -> ConditionError {
    ConditionError {
        part,
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
enum Operand {
    Text(String),
    List(Vec<String>),
    Regex(regex::Regex),
    Range(String, String),
    TimeRange(NaiveTime, NaiveTime),
}

/// A condition ready to evaluate: its values folded, its regex compiled.
#[derive(Debug, Clone)]
pub struct Condition {
    pub field: Field,
    pub op: Op,
    case_sensitive: bool,
    operand: Operand,
}

/// Folds case and accents: `Olá` and `OLA` compare equal.
pub fn fold(s: &str) -> String {
    s.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
        .ok()
}

fn weekday_of(s: &str) -> Option<Weekday> {
    Some(match fold(s).get(..3)? {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

fn weekday_name(w: Weekday) -> &'static str {
    match w {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

impl Condition {
    /// Compiles a condition of a trigger (`variables: false`) or of a flow's branch.
    pub fn compile(spec: &ConditionSpec, variables: bool) -> Result<Condition, ConditionError> {
        let field = if variables {
            Field::parse_with_variables(&spec.field)
        } else {
            Field::parse(&spec.field)
        }
        .ok_or_else(|| {
            bad(
                "field",
                format!(
                    "unknown field {:?}; known: {}{}",
                    spec.field,
                    Field::NAMES.join(", "),
                    if variables { ", or a variable" } else { "" }
                ),
            )
        })?;
        let op = Op::parse(&spec.op).ok_or_else(|| {
            bad(
                "op",
                format!("unknown op {:?}; known: {}", spec.op, Op::NAMES.join(", ")),
            )
        })?;
        let cs = spec.case_sensitive;
        let norm = |s: &str| if cs { s.to_owned() } else { fold(s) };
        let list = || -> Result<Vec<String>, ConditionError> {
            let items = spec
                .value
                .as_array()
                .ok_or_else(|| bad("value", format!("{} takes a list of values", spec.op)))?;
            if items.is_empty() || items.len() > MAX_LIST {
                return Err(bad(
                    "value",
                    format!("the list must hold 1 to {MAX_LIST} values"),
                ));
            }
            items
                .iter()
                .map(|v| {
                    string_of(v)
                        .map(|s| norm(&s))
                        .ok_or_else(|| bad("value", "every value must be a string or a number"))
                })
                .collect()
        };
        let operand = match op {
            Op::Contains | Op::Equals | Op::StartsWith | Op::EndsWith => {
                let s = string_of(&spec.value)
                    .ok_or_else(|| bad("value", format!("{} takes a string", spec.op)))?;
                if op == Op::Equals && field == Field::Weekday && weekday_of(&s).is_none() {
                    return Err(bad("value", format!("{s:?} is not a weekday (mon … sun)")));
                }
                Operand::Text(norm(&s))
            }
            Op::Regex => {
                let p = spec
                    .value
                    .as_str()
                    .ok_or_else(|| bad("value", "regex takes a pattern string"))?;
                if p.chars().count() > MAX_PATTERN_CHARS {
                    return Err(bad(
                        "value",
                        format!("the pattern is longer than {MAX_PATTERN_CHARS} characters"),
                    ));
                }
                let pattern = if cs { p.to_owned() } else { fold(p) };
                let re = regex::RegexBuilder::new(&pattern)
                    .case_insensitive(!cs)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| bad("value", format!("the pattern does not compile: {e}")))?;
                Operand::Regex(re)
            }
            Op::Any | Op::In => {
                let l = list()?;
                if field == Field::Weekday {
                    for w in &l {
                        if weekday_of(w).is_none() {
                            return Err(bad(
                                "value",
                                format!("{w:?} is not a weekday (mon … sun)"),
                            ));
                        }
                    }
                    Operand::List(
                        l.iter()
                            .filter_map(|w| weekday_of(w))
                            .map(|w| weekday_name(w).to_owned())
                            .collect(),
                    )
                } else {
                    Operand::List(l)
                }
            }
            Op::Between => {
                let l = list()?;
                let [lo, hi] = <[String; 2]>::try_from(l)
                    .map_err(|_| bad("value", "between takes two bounds: [from, to]"))?;
                match field {
                    Field::TimeOfDay => {
                        let t = |s: &str| {
                            parse_time(s).ok_or_else(|| {
                                bad("value", format!("{s:?} is not a time of day (HH:MM)"))
                            })
                        };
                        Operand::TimeRange(t(&lo)?, t(&hi)?)
                    }
                    Field::Weekday => {
                        let w = |s: &str| {
                            weekday_of(s).ok_or_else(|| {
                                bad("value", format!("{s:?} is not a weekday (mon … sun)"))
                            })
                        };
                        let (a, b) = (w(&lo)?, w(&hi)?);
                        Operand::Range(
                            a.num_days_from_monday().to_string(),
                            b.num_days_from_monday().to_string(),
                        )
                    }
                    _ => Operand::Range(lo, hi),
                }
            }
        };
        if matches!(field, Field::TimeOfDay)
            && !matches!(
                op,
                Op::Between | Op::Equals | Op::StartsWith | Op::In | Op::Any
            )
        {
            return Err(bad(
                "op",
                "time_of_day takes between, equals, starts_with or in",
            ));
        }
        Ok(Condition {
            field,
            op,
            case_sensitive: cs,
            operand,
        })
    }

    /// Whether `facts` satisfy the condition.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let values: Vec<String> = match &self.field {
            Field::Text => vec![facts.text.unwrap_or_default().to_owned()],
            Field::From => vec![facts.from.unwrap_or_default().to_owned()],
            Field::Type => vec![facts.kind.unwrap_or_default().to_owned()],
            Field::ChatLabel => facts.labels.to_vec(),
            Field::Column => vec![facts.column.unwrap_or_default().to_owned()],
            Field::Board => vec![facts.board.unwrap_or_default().to_owned()],
            Field::TimeOfDay => {
                let local = facts.at.with_timezone(&facts.tz);
                if let Operand::TimeRange(lo, hi) = &self.operand {
                    let t = NaiveTime::from_hms_opt(local.hour(), local.minute(), local.second())
                        .unwrap_or_default();
                    return if lo <= hi {
                        *lo <= t && t <= *hi
                    } else {
                        // 22:00 … 06:00 wraps past midnight.
                        t >= *lo || t <= *hi
                    };
                }
                vec![format!("{:02}:{:02}", local.hour(), local.minute())]
            }
            Field::Weekday => {
                let day = facts.at.with_timezone(&facts.tz).weekday();
                if let Operand::Range(lo, hi) = &self.operand {
                    let (lo, hi): (u32, u32) = (lo.parse().unwrap_or(0), hi.parse().unwrap_or(6));
                    let d = day.num_days_from_monday();
                    return if lo <= hi {
                        lo <= d && d <= hi
                    } else {
                        d >= lo || d <= hi
                    };
                }
                if let Operand::Text(t) = &self.operand {
                    return weekday_of(t) == Some(day);
                }
                vec![weekday_name(day).to_owned()]
            }
            Field::Variable(name) => vec![
                facts
                    .vars
                    .and_then(|v| v.get(name))
                    .map(value_text)
                    .unwrap_or_default(),
            ],
        };
        values.iter().any(|v| self.matches_value(v))
    }

    fn matches_value(&self, raw: &str) -> bool {
        let v = if self.case_sensitive {
            raw.to_owned()
        } else {
            fold(raw)
        };
        match (&self.op, &self.operand) {
            (Op::Contains, Operand::Text(t)) => v.contains(t.as_str()),
            (Op::Equals, Operand::Text(t)) => v.trim() == t.trim(),
            (Op::StartsWith, Operand::Text(t)) => v.trim_start().starts_with(t.as_str()),
            (Op::EndsWith, Operand::Text(t)) => v.trim_end().ends_with(t.as_str()),
            (Op::Regex, Operand::Regex(re)) => re.is_match(&v),
            (Op::Any, Operand::List(l)) => l.iter().any(|w| contains_word(&v, w)),
            (Op::In, Operand::List(l)) => l.iter().any(|w| v.trim() == w.trim()),
            (Op::Between, Operand::Range(lo, hi)) => {
                match (
                    v.trim().parse::<f64>(),
                    lo.parse::<f64>(),
                    hi.parse::<f64>(),
                ) {
                    (Ok(x), Ok(a), Ok(b)) => a <= x && x <= b,
                    _ => lo.as_str() <= v.as_str() && v.as_str() <= hi.as_str(),
                }
            }
            _ => false,
        }
    }
}

/// Whether `word` occurs in `text` as whole words (`price` in "the price?", not in "prices").
fn contains_word(text: &str, word: &str) -> bool {
    let word = word.trim();
    if word.is_empty() {
        return false;
    }
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// A variable's value as text: strings as they are, anything else as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// What conditions read: the message (when there is one), the time in the tenant's zone and,
/// in a flow, its variables.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub text: Option<&'a str>,
    pub from: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub labels: &'a [String],
    pub at: DateTime<Utc>,
    pub tz: Tz,
    pub vars: Option<&'a BTreeMap<String, Value>>,
    /// `card.moved`: the column the card went to, and its board (by name).
    pub column: Option<&'a str>,
    pub board: Option<&'a str>,
}

/// Parses a time zone name (`Europe/Berlin`); `None` for an unknown one.
pub fn time_zone(name: &str) -> Option<Tz> {
    name.parse().ok()
}

/// Compiles a list of conditions, naming the first bad one: `conditions[2].value`.
pub fn compile_all(
    specs: &[ConditionSpec],
    variables: bool,
) -> Result<Vec<Condition>, (usize, ConditionError)> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| Condition::compile(s, variables).map_err(|e| (i, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    fn cond(field: &str, op: &str, value: Value) -> Condition {
        Condition::compile(
            &ConditionSpec {
                field: field.into(),
                op: op.into(),
                value,
                case_sensitive: false,
            },
            false,
        )
        .unwrap()
    }

    fn facts(text: &str) -> Facts<'static> {
        let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
        Facts {
            text: Some(text),
            from: Some("+4915550001"),
            kind: Some("text"),
            labels: &[],
            at: Utc.with_ymd_and_hms(2026, 12, 3, 8, 30, 0).unwrap(),
            tz: chrono_tz::UTC,
            vars: None,
            column: None,
            board: None,
        }
    }

    #[test]
    fn text_operators_fold_case_and_accents() {
        assert!(cond("text", "contains", json!("preco")).matches(&facts("Qual o PREÇO?")));
        assert!(cond("text", "equals", json!("Olá")).matches(&facts("  ola ")));
        assert!(cond("text", "starts_with", json!("hi")).matches(&facts("Hi there")));
        assert!(cond("text", "ends_with", json!("?")).matches(&facts("price?")));
        assert!(!cond("text", "equals", json!("hi")).matches(&facts("hi there")));
    }

    #[test]
    fn case_sensitive_conditions_compare_exactly() {
        let c = Condition::compile(
            &ConditionSpec {
                field: "text".into(),
                op: "contains".into(),
                value: json!("SALE"),
                case_sensitive: true,
            },
            false,
        )
        .unwrap();
        assert!(c.matches(&facts("BIG SALE")));
        assert!(!c.matches(&facts("big sale")));
    }

    #[test]
    fn any_matches_whole_words_and_in_matches_whole_values() {
        let any = cond("text", "any", json!(["price", "cost"]));
        assert!(any.matches(&facts("what's the price?")));
        assert!(!any.matches(&facts("prices are")));
        let is = cond("type", "in", json!(["image", "text"]));
        assert!(is.matches(&facts("x")));
    }

    #[test]
    fn regexes_compile_once_with_a_size_cap() {
        let re = cond("text", "regex", json!("^order\\s+#?\\d{4,}$"));
        assert!(re.matches(&facts("ORDER #12345")));
        assert!(!re.matches(&facts("order 12")));
        let huge = Condition::compile(
            &ConditionSpec {
                field: "text".into(),
                op: "regex".into(),
                value: json!("(\\w{1,100}){1,100}"),
                case_sensitive: false,
            },
            false,
        );
        assert_eq!(huge.unwrap_err().part, "value");
        let broken = Condition::compile(
            &ConditionSpec {
                field: "text".into(),
                op: "regex".into(),
                value: json!("(unclosed"),
                case_sensitive: false,
            },
            false,
        );
        assert!(broken.unwrap_err().message.contains("does not compile"));
    }

    #[test]
    fn times_and_weekdays_are_read_in_the_tenants_zone() {
        // 08:30 UTC on Thursday 3 December 2026 is 05:30 in São Paulo and 17:30 in Tokyo.
        let mut f = facts("x");
        let hours = cond("time_of_day", "between", json!(["09:00", "18:00"]));
        assert!(!hours.matches(&f));
        f.tz = time_zone("Asia/Tokyo").unwrap();
        assert!(hours.matches(&f));
        let night = cond("time_of_day", "between", json!(["22:00", "06:00"]));
        f.tz = time_zone("America/Sao_Paulo").unwrap();
        assert!(night.matches(&f));
        assert!(cond("weekday", "equals", json!("thu")).matches(&f));
        assert!(cond("weekday", "between", json!(["mon", "fri"])).matches(&f));
        assert!(!cond("weekday", "in", json!(["sat", "sunday"])).matches(&f));
        // Late Thursday in UTC is already Friday in Tokyo.
        let mut late = facts("x");
        late.at = Utc.with_ymd_and_hms(2026, 12, 3, 20, 0, 0).unwrap();
        late.tz = time_zone("Asia/Tokyo").unwrap();
        assert!(cond("weekday", "equals", json!("fri")).matches(&late));
    }

    #[test]
    fn bad_conditions_name_their_part() {
        let e = |f: &str, o: &str, v: Value| {
            Condition::compile(
                &ConditionSpec {
                    field: f.into(),
                    op: o.into(),
                    value: v,
                    case_sensitive: false,
                },
                false,
            )
            .unwrap_err()
            .part
        };
        assert_eq!(e("colour", "equals", json!("x")), "field");
        assert_eq!(e("text", "like", json!("x")), "op");
        assert_eq!(e("text", "any", json!("x")), "value");
        assert_eq!(e("time_of_day", "between", json!(["9am", "5pm"])), "value");
        assert_eq!(e("weekday", "in", json!(["funday"])), "value");
    }

    #[test]
    fn branch_conditions_read_variables() {
        let c = Condition::compile(
            &ConditionSpec {
                field: "answer".into(),
                op: "in".into(),
                value: json!(["yes", "sim"]),
                case_sensitive: false,
            },
            true,
        )
        .unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("answer".to_owned(), json!("Sim"));
        let mut f = facts("");
        f.vars = Some(&vars);
        assert!(c.matches(&f));
        vars.insert("answer".to_owned(), json!("no"));
        let mut f = facts("");
        f.vars = Some(&vars);
        assert!(!c.matches(&f));
    }

    proptest! {
        #[test]
        fn folding_is_idempotent_and_ignores_case(s in "[a-zA-Zà-öø-üÀ-ÖØ-Ü0-9 ?!]{0,40}") {
            let once = fold(&s);
            prop_assert_eq!(fold(&once), once.clone());
            prop_assert_eq!(fold(&s.to_uppercase()), fold(&s.to_lowercase()));
        }

        #[test]
        fn a_text_contains_each_of_its_own_words(words in proptest::collection::vec("[a-zà-ü]{1,8}", 1..6)) {
            let text = words.join(" ");
            for w in &words {
                prop_assert!(cond("text", "contains", json!(w)).matches(&facts(&text)));
                prop_assert!(cond("text", "any", json!([w])).matches(&facts(&text.to_uppercase())));
            }
        }

        #[test]
        fn evaluation_never_panics(text in "\\PC{0,60}", pattern in "[a-z.*+?()|\\\\]{0,12}") {
            if let Ok(c) = Condition::compile(&ConditionSpec { field: "text".into(), op: "regex".into(), value: json!(pattern), case_sensitive: false }, false) {
                let _ = c.matches(&facts(&text));
            }
        }
    }
}
