//! Flows as pure code: the step types, their validation at creation (every error names its
//! step), `{{variable}}` templates (minijinja) and the interpreter. The interpreter does no
//! I/O: it tells its driver what a step needs done (send, call, wait) and is told the result,
//! so the driver can persist each step with its effect in one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::conditions::{Condition, ConditionSpec, Facts, compile_all};

/// The most steps a flow may have.
pub const MAX_STEPS: usize = 100;
/// The most steps one execution may run (a cycle through a wait runs on, but not forever).
pub const MAX_STEPS_RUN: u32 = 10_000;
/// The longest `wait` or `wait_for_reply`: 90 days.
pub const MAX_WAIT_SECS: u64 = 90 * 24 * 3600;
/// The longest text a step may send.
pub const MAX_TEXT_CHARS: usize = 4096;

/// Variables every execution has.
pub const BUILTIN_VARIABLES: &[&str] = &["contact_name", "phone", "text", "session_name", "chat"];

/// Step types that arrive with their capabilities.
const LATER: &[(&str, &str)] = &[("run_function", "user functions")];

/// Every step type a flow may use today.
pub const STEP_TYPES: &[&str] = &[
    "send_text",
    "send_quick_reply",
    "send_media",
    "wait",
    "wait_for_reply",
    "branch",
    "set_variable",
    "ai_reply",
    "bot",
    "http_request",
    "create_card",
    "move_card",
    "notify",
    "end",
];

/// The longest card title or notification title a step may render.
pub const MAX_TITLE_CHARS: usize = 200;

pub fn is_variable_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A step id is a label people read: 1 to 64 characters, no spaces or control characters.
fn is_step_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= 64
        && s.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// What a flow's validation found wrong: the step (when one is at fault) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    pub step: Option<String>,
    /// The step's index in `steps`, when it has one.
    pub index: Option<usize>,
    pub message: String,
}

/// `pause`, `resume` or `off` (the chat's bot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotAction {
    /// The session's bot pauses (neither triggers nor agents answer) until resumed.
    Pause,
    /// The session's bot resumes.
    Resume,
    /// This chat's bot (its agent) is turned off.
    Off,
}

/// What a step does to the platform's own records (templates rendered): the driver applies
/// it in the transaction that records the step, so it happens exactly once.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlatformAction {
    /// A card for the execution's chat on the board, unless the chat has one there already.
    CreateCard {
        board_id: uuid::Uuid,
        /// A column's id or name; `None`: the board's first column.
        column: Option<String>,
        /// `None`: the contact's name, else its number.
        title: Option<String>,
        description: Option<String>,
        assignee_id: Option<uuid::Uuid>,
    },
    /// The chat's card on the board goes to the bottom of the column.
    MoveCard {
        board_id: uuid::Uuid,
        column: String,
    },
    /// A notification to the tenant's members (or one of them).
    Notify {
        title: String,
        body: String,
        level: String,
        member_id: Option<uuid::Uuid>,
    },
}

/// An HTTP call a flow makes (templates rendered).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpCall {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub timeout_secs: u64,
}

/// What a step sends (templates rendered).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outbound {
    Text {
        text: String,
    },
    /// A tenant's quick reply by shortcut, with its variables rendered (the driver renders
    /// the reply itself).
    QuickReply {
        shortcut: String,
        variables: BTreeMap<String, String>,
    },
    Media {
        media_type: String,
        url: String,
        caption: Option<String>,
        filename: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub enum StepKind {
    SendText {
        text: String,
    },
    SendQuickReply {
        shortcut: String,
        /// Templates, rendered when the step runs.
        variables: BTreeMap<String, String>,
    },
    SendMedia {
        media_type: String,
        url: String,
        caption: Option<String>,
        filename: Option<String>,
    },
    Wait {
        seconds: u64,
    },
    WaitForReply {
        timeout_secs: u64,
        variable: String,
        on_timeout: Option<String>,
    },
    Branch {
        conditions: Vec<Condition>,
        any: bool,
        then: String,
        otherwise: String,
    },
    SetVariable {
        name: String,
        value: Value,
    },
    AiReply {
        agent_id: uuid::Uuid,
    },
    Bot {
        action: BotAction,
    },
    HttpRequest {
        method: String,
        url: String,
        headers: BTreeMap<String, String>,
        body: Option<Value>,
        variable: Option<String>,
        timeout_secs: u64,
    },
    CreateCard {
        board_id: uuid::Uuid,
        column: Option<String>,
        /// Templates.
        title: Option<String>,
        description: Option<String>,
        assignee_id: Option<uuid::Uuid>,
    },
    MoveCard {
        board_id: uuid::Uuid,
        column: String,
    },
    Notify {
        /// Templates.
        title: String,
        body: Option<String>,
        level: String,
        member_id: Option<uuid::Uuid>,
    },
    End,
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::SendText { .. } => "send_text",
            StepKind::SendQuickReply { .. } => "send_quick_reply",
            StepKind::SendMedia { .. } => "send_media",
            StepKind::Wait { .. } => "wait",
            StepKind::WaitForReply { .. } => "wait_for_reply",
            StepKind::Branch { .. } => "branch",
            StepKind::SetVariable { .. } => "set_variable",
            StepKind::AiReply { .. } => "ai_reply",
            StepKind::Bot { .. } => "bot",
            StepKind::HttpRequest { .. } => "http_request",
            StepKind::CreateCard { .. } => "create_card",
            StepKind::MoveCard { .. } => "move_card",
            StepKind::Notify { .. } => "notify",
            StepKind::End => "end",
        }
    }

    fn waits(&self) -> bool {
        matches!(self, StepKind::Wait { .. } | StepKind::WaitForReply { .. })
    }

    /// Whether the step sends to the contact (exactly once, keyed by execution and step).
    pub fn sends(&self) -> bool {
        matches!(
            self,
            StepKind::SendText { .. }
                | StepKind::SendQuickReply { .. }
                | StepKind::SendMedia { .. }
                | StepKind::AiReply { .. }
        )
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    /// Where it goes on; `None`: the flow ends.
    pub next: Option<String>,
}

/// A validated flow.
#[derive(Debug, Clone)]
pub struct Flow {
    pub steps: Vec<Step>,
    index: HashMap<String, usize>,
    /// Variables the flow declares, with their defaults (`POST …/execute` may set them).
    pub defaults: BTreeMap<String, Value>,
    /// The agents its `ai_reply` steps use (for the caller to check they exist).
    pub agents: BTreeSet<uuid::Uuid>,
    /// The boards its card steps use, and the members they name (checked the same way).
    pub boards: BTreeSet<uuid::Uuid>,
    pub members: BTreeSet<uuid::Uuid>,
}

struct Ctx<'a> {
    id: &'a str,
    index: usize,
}

impl Ctx<'_> {
    fn err(&self, message: impl Into<String>) -> FlowError {
        FlowError {
            step: Some(self.id.to_owned()),
            index: Some(self.index),
            message: message.into(),
        }
    }
}

fn flow_err(message: impl Into<String>) -> FlowError {
    FlowError {
        step: None,
        index: None,
        message: message.into(),
    }
}

fn str_field<'a>(
    c: &Ctx<'_>,
    o: &'a serde_json::Map<String, Value>,
    k: &str,
) -> Result<&'a str, FlowError> {
    o.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| c.err(format!("{k} is required (a string)")))
}

fn opt_str(
    c: &Ctx<'_>,
    o: &serde_json::Map<String, Value>,
    k: &str,
) -> Result<Option<String>, FlowError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(c.err(format!("{k} must be a string"))),
    }
}

fn secs(
    c: &Ctx<'_>,
    o: &serde_json::Map<String, Value>,
    k: &str,
    min: u64,
) -> Result<u64, FlowError> {
    let v = o
        .get(k)
        .and_then(Value::as_u64)
        .ok_or_else(|| c.err(format!("{k} is required (whole seconds)")))?;
    if !(min..=MAX_WAIT_SECS).contains(&v) {
        return Err(c.err(format!("{k} must be from {min} to {MAX_WAIT_SECS}")));
    }
    Ok(v)
}

fn allowed_keys(
    c: &Ctx<'_>,
    o: &serde_json::Map<String, Value>,
    keys: &[&str],
) -> Result<(), FlowError> {
    for k in o.keys() {
        if !["id", "type", "next"].contains(&k.as_str()) && !keys.contains(&k.as_str()) {
            return Err(c.err(format!(
                "unknown field {k:?}; this step takes {}",
                if keys.is_empty() {
                    "only id, type and next".to_owned()
                } else {
                    keys.join(", ")
                }
            )));
        }
    }
    Ok(())
}

fn opt_id(
    c: &Ctx<'_>,
    o: &serde_json::Map<String, Value>,
    k: &str,
) -> Result<Option<uuid::Uuid>, FlowError> {
    opt_str(c, o, k)?
        .map(|s| s.parse().map_err(|_| c.err(format!("{k} is not an id"))))
        .transpose()
}

/// A column named by id or name: 1 to 64 characters.
fn column_ref(c: &Ctx<'_>, v: Option<String>) -> Result<Option<String>, FlowError> {
    match v {
        Some(col) if col.trim().is_empty() || col.chars().count() > 64 => {
            Err(c.err("column is a column's id or name (1 to 64 characters)"))
        }
        other => Ok(other),
    }
}

/// Instructions a template may run: a tenant's template never spins.
const TEMPLATE_FUEL: u64 = 20_000;
/// The longest text a template may render.
const MAX_RENDERED: usize = 64 * 1024;

/// The variables a template uses (top-level names), or why it does not parse. Templates are
/// `{{ expressions }}` (with filters), not statements: no loops to run away with.
pub fn template_variables(t: &str) -> Result<BTreeSet<String>, String> {
    if t.contains("{%") {
        return Err("only {{ variable }} expressions are allowed, not {% statements %}".into());
    }
    if !t.contains("{{") {
        return Ok(BTreeSet::new());
    }
    let env = minijinja::Environment::new();
    let tpl = env.template_from_str(t).map_err(|e| e.to_string())?;
    Ok(tpl.undeclared_variables(false).into_iter().collect())
}

/// Renders a template with the variables; an unset variable renders empty.
pub fn render(t: &str, vars: &BTreeMap<String, Value>) -> Result<String, String> {
    if !t.contains("{{") && !t.contains("{%") {
        return Ok(t.to_owned());
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    env.set_fuel(Some(TEMPLATE_FUEL));
    // Values read as JSON writes them (`true`, `{"a":1}`), not as Python would (`True`).
    env.set_formatter(|out, state, value| {
        use minijinja::value::ValueKind;
        match value.kind() {
            ValueKind::Bool => out.write_str(if value.is_true() { "true" } else { "false" })?,
            ValueKind::Map | ValueKind::Seq => {
                out.write_str(&serde_json::to_string(value).unwrap_or_default())?
            }
            _ => minijinja::escape_formatter(out, state, value)?,
        }
        Ok(())
    });
    let out = env.render_str(t, vars).map_err(|e| e.to_string())?;
    if out.len() > MAX_RENDERED {
        return Err(format!(
            "the template rendered more than {MAX_RENDERED} bytes"
        ));
    }
    Ok(out)
}

impl Flow {
    /// Parses and validates `steps` (a JSON array) with the flow's declared `variables`.
    pub fn parse(steps: &Value, variables: &BTreeMap<String, Value>) -> Result<Flow, FlowError> {
        let list = steps
            .as_array()
            .ok_or_else(|| flow_err("steps must be a list"))?;
        if list.is_empty() || list.len() > MAX_STEPS {
            return Err(flow_err(format!("a flow has 1 to {MAX_STEPS} steps")));
        }
        for name in variables.keys() {
            if !is_variable_name(name) {
                return Err(flow_err(format!(
                    "variable {name:?}: a name is letters, digits and _, starting with a letter"
                )));
            }
        }
        // Ids first: references may point forward.
        let mut ids = Vec::with_capacity(list.len());
        let mut index = HashMap::new();
        for (i, s) in list.iter().enumerate() {
            let id = s
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| FlowError {
                    step: None,
                    index: Some(i),
                    message: format!("steps[{i}] has no id"),
                })?;
            let c = Ctx { id, index: i };
            if !is_step_id(id) {
                return Err(c.err("an id is 1 to 64 characters without spaces"));
            }
            if index.insert(id.to_owned(), i).is_some() {
                return Err(c.err("the id is used by another step"));
            }
            ids.push(id.to_owned());
        }
        let mut steps = Vec::with_capacity(list.len());
        let mut defined: BTreeSet<String> =
            BUILTIN_VARIABLES.iter().map(|s| (*s).to_owned()).collect();
        defined.extend(variables.keys().cloned());
        let mut templates: Vec<(usize, String, String)> = Vec::new();
        let mut agents = BTreeSet::new();
        let mut boards = BTreeSet::new();
        let mut members = BTreeSet::new();
        let mut branch_vars: Vec<(usize, usize, String)> = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let c = Ctx {
                id: &ids[i],
                index: i,
            };
            let o = s.as_object().ok_or_else(|| c.err("a step is an object"))?;
            let ty = str_field(&c, o, "type")?;
            if let Some((_, what)) = LATER.iter().find(|(t, _)| *t == ty) {
                return Err(c.err(format!("{ty} is not available yet: it arrives with {what}")));
            }
            let step_ref = |k: &str| -> Result<Option<String>, FlowError> {
                match opt_str(&c, o, k)? {
                    Some(r) if index.contains_key(&r) => Ok(Some(r)),
                    Some(r) => Err(c.err(format!("{k} names an unknown step {r:?}"))),
                    None => Ok(None),
                }
            };
            let next = step_ref("next")?.or_else(|| ids.get(i + 1).cloned());
            let mut template = |k: &str, t: &str| templates.push((i, k.to_owned(), t.to_owned()));
            let kind = match ty {
                "send_text" => {
                    allowed_keys(&c, o, &["text"])?;
                    let text = str_field(&c, o, "text")?;
                    if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS {
                        return Err(c.err(format!("text must be 1 to {MAX_TEXT_CHARS} characters")));
                    }
                    template("text", text);
                    StepKind::SendText {
                        text: text.to_owned(),
                    }
                }
                "send_quick_reply" => {
                    allowed_keys(&c, o, &["shortcut", "variables"])?;
                    let shortcut = str_field(&c, o, "shortcut")?.trim().to_lowercase();
                    if !shortcut.starts_with('/') || !(2..=33).contains(&shortcut.len()) {
                        return Err(c.err("shortcut must be a quick reply's, like /price"));
                    }
                    let mut variables = BTreeMap::new();
                    match o.get("variables") {
                        None | Some(Value::Null) => {}
                        Some(Value::Object(vars)) => {
                            for (k, v) in vars {
                                let Value::String(t) = v else {
                                    return Err(
                                        c.err(format!("variables.{k} must be text (a template)"))
                                    );
                                };
                                if !is_variable_name(k) {
                                    return Err(
                                        c.err(format!("variables.{k} is not a variable name"))
                                    );
                                }
                                template(&format!("variables.{k}"), t);
                                variables.insert(k.clone(), t.clone());
                            }
                        }
                        Some(_) => return Err(c.err("variables must be an object")),
                    }
                    StepKind::SendQuickReply {
                        shortcut,
                        variables,
                    }
                }
                "send_media" => {
                    allowed_keys(&c, o, &["url", "media_type", "caption", "filename"])?;
                    let url = str_field(&c, o, "url")?;
                    let media_type = str_field(&c, o, "media_type")?;
                    if !["image", "video", "audio", "document"].contains(&media_type) {
                        return Err(c.err("media_type is image, video, audio or document"));
                    }
                    template("url", url);
                    let caption = opt_str(&c, o, "caption")?;
                    if let Some(t) = &caption {
                        template("caption", t);
                    }
                    StepKind::SendMedia {
                        media_type: media_type.to_owned(),
                        url: url.to_owned(),
                        caption,
                        filename: opt_str(&c, o, "filename")?,
                    }
                }
                "wait" => {
                    allowed_keys(&c, o, &["seconds"])?;
                    StepKind::Wait {
                        seconds: secs(&c, o, "seconds", 1)?,
                    }
                }
                "wait_for_reply" => {
                    allowed_keys(&c, o, &["timeout_secs", "variable", "on_timeout"])?;
                    let variable = opt_str(&c, o, "variable")?.unwrap_or_else(|| "reply".into());
                    if !is_variable_name(&variable) {
                        return Err(
                            c.err("variable: letters, digits and _, starting with a letter")
                        );
                    }
                    defined.insert(variable.clone());
                    StepKind::WaitForReply {
                        timeout_secs: secs(&c, o, "timeout_secs", 1)?,
                        variable,
                        on_timeout: step_ref("on_timeout")?,
                    }
                }
                "branch" => {
                    allowed_keys(&c, o, &["conditions", "match", "then", "else"])?;
                    let specs: Vec<ConditionSpec> =
                        serde_json::from_value(o.get("conditions").cloned().unwrap_or(Value::Null))
                            .map_err(|e| c.err(format!("conditions: {e}")))?;
                    if specs.is_empty() {
                        return Err(c.err("conditions: at least one"));
                    }
                    let conditions = compile_all(&specs, true).map_err(|(k, e)| {
                        c.err(format!("conditions[{k}].{}: {}", e.part, e.message))
                    })?;
                    for (k, cond) in conditions.iter().enumerate() {
                        if let super::conditions::Field::Variable(v) = &cond.field {
                            branch_vars.push((i, k, v.clone()));
                        }
                    }
                    let any = match o.get("match").and_then(Value::as_str) {
                        None | Some("all") => false,
                        Some("any") => true,
                        Some(m) => return Err(c.err(format!("match is all or any, not {m:?}"))),
                    };
                    let then =
                        step_ref("then")?.ok_or_else(|| c.err("then is required (a step id)"))?;
                    let otherwise = match step_ref("else")? {
                        Some(e) => e,
                        None => next
                            .clone()
                            .ok_or_else(|| c.err("else is required on the last step"))?,
                    };
                    StepKind::Branch {
                        conditions,
                        any,
                        then,
                        otherwise,
                    }
                }
                "set_variable" => {
                    allowed_keys(&c, o, &["name", "value"])?;
                    let name = str_field(&c, o, "name")?;
                    if !is_variable_name(name) || BUILTIN_VARIABLES.contains(&name) {
                        return Err(c.err(format!(
                            "name {name:?}: letters, digits and _, starting with a letter, not a built-in"
                        )));
                    }
                    let value = o
                        .get("value")
                        .cloned()
                        .ok_or_else(|| c.err("value is required"))?;
                    if let Value::String(t) = &value {
                        template("value", t);
                    }
                    defined.insert(name.to_owned());
                    StepKind::SetVariable {
                        name: name.to_owned(),
                        value,
                    }
                }
                "ai_reply" => {
                    allowed_keys(&c, o, &["agent_id"])?;
                    let agent_id = str_field(&c, o, "agent_id")?
                        .parse()
                        .map_err(|_| c.err("agent_id is not an id"))?;
                    agents.insert(agent_id);
                    StepKind::AiReply { agent_id }
                }
                "bot" => {
                    allowed_keys(&c, o, &["action"])?;
                    let action =
                        serde_json::from_value(o.get("action").cloned().unwrap_or(Value::Null))
                            .map_err(|_| c.err("action is pause, resume or off"))?;
                    StepKind::Bot { action }
                }
                "http_request" => {
                    allowed_keys(
                        &c,
                        o,
                        &[
                            "method",
                            "url",
                            "headers",
                            "body",
                            "variable",
                            "timeout_secs",
                        ],
                    )?;
                    let method = opt_str(&c, o, "method")?
                        .unwrap_or_else(|| "GET".into())
                        .to_ascii_uppercase();
                    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                        return Err(c.err("method is GET, POST, PUT, PATCH or DELETE"));
                    }
                    let url = str_field(&c, o, "url")?;
                    if !(url.contains("{{")
                        || url.starts_with("http://")
                        || url.starts_with("https://"))
                    {
                        return Err(c.err("url must be http:// or https://"));
                    }
                    template("url", url);
                    let headers: BTreeMap<String, String> = serde_json::from_value(
                        o.get("headers").cloned().unwrap_or_else(|| json!({})),
                    )
                    .map_err(|_| c.err("headers is an object of strings"))?;
                    for (k, v) in &headers {
                        template(&format!("headers.{k}"), v);
                    }
                    let body = o.get("body").cloned().filter(|b| !b.is_null());
                    if let Some(Value::String(t)) = &body {
                        template("body", t);
                    }
                    let variable = opt_str(&c, o, "variable")?;
                    if let Some(v) = &variable {
                        if !is_variable_name(v) {
                            return Err(
                                c.err("variable: letters, digits and _, starting with a letter")
                            );
                        }
                        defined.insert(v.clone());
                    }
                    let timeout_secs = match o.get("timeout_secs") {
                        None => 10,
                        Some(v) => v
                            .as_u64()
                            .filter(|t| (1..=30).contains(t))
                            .ok_or_else(|| c.err("timeout_secs must be from 1 to 30"))?,
                    };
                    StepKind::HttpRequest {
                        method,
                        url: url.to_owned(),
                        headers,
                        body,
                        variable,
                        timeout_secs,
                    }
                }
                "create_card" => {
                    allowed_keys(
                        &c,
                        o,
                        &["board_id", "column", "title", "description", "assignee_id"],
                    )?;
                    let board_id = opt_id(&c, o, "board_id")?
                        .ok_or_else(|| c.err("board_id is required (a board's id)"))?;
                    boards.insert(board_id);
                    let title = opt_str(&c, o, "title")?;
                    if let Some(t) = &title {
                        if t.trim().is_empty() || t.chars().count() > MAX_TITLE_CHARS {
                            return Err(
                                c.err(format!("title must be 1 to {MAX_TITLE_CHARS} characters"))
                            );
                        }
                        template("title", t);
                    }
                    let description = opt_str(&c, o, "description")?;
                    if let Some(t) = &description {
                        template("description", t);
                    }
                    let assignee_id = opt_id(&c, o, "assignee_id")?;
                    members.extend(assignee_id);
                    StepKind::CreateCard {
                        board_id,
                        column: column_ref(&c, opt_str(&c, o, "column")?)?,
                        title,
                        description,
                        assignee_id,
                    }
                }
                "move_card" => {
                    allowed_keys(&c, o, &["board_id", "column"])?;
                    let board_id = opt_id(&c, o, "board_id")?
                        .ok_or_else(|| c.err("board_id is required (a board's id)"))?;
                    boards.insert(board_id);
                    let column = column_ref(&c, opt_str(&c, o, "column")?)?
                        .ok_or_else(|| c.err("column is required (a column's id or name)"))?;
                    StepKind::MoveCard { board_id, column }
                }
                "notify" => {
                    allowed_keys(&c, o, &["title", "body", "level", "member_id"])?;
                    let title = str_field(&c, o, "title")?;
                    if title.trim().is_empty() || title.chars().count() > MAX_TITLE_CHARS {
                        return Err(
                            c.err(format!("title must be 1 to {MAX_TITLE_CHARS} characters"))
                        );
                    }
                    template("title", title);
                    let body = opt_str(&c, o, "body")?;
                    if let Some(t) = &body {
                        if t.chars().count() > MAX_TEXT_CHARS {
                            return Err(
                                c.err(format!("body must be at most {MAX_TEXT_CHARS} characters"))
                            );
                        }
                        template("body", t);
                    }
                    let level = opt_str(&c, o, "level")?.unwrap_or_else(|| "info".into());
                    if !["info", "warning", "critical"].contains(&level.as_str()) {
                        return Err(c.err("level is info, warning or critical"));
                    }
                    let member_id = opt_id(&c, o, "member_id")?;
                    members.extend(member_id);
                    StepKind::Notify {
                        title: title.to_owned(),
                        body,
                        level,
                        member_id,
                    }
                }
                "end" => {
                    allowed_keys(&c, o, &[])?;
                    StepKind::End
                }
                other => {
                    return Err(c.err(format!(
                        "unknown type {other:?}; known: {}",
                        STEP_TYPES.join(", ")
                    )));
                }
            };
            let next = if matches!(kind, StepKind::End) {
                None
            } else {
                next
            };
            steps.push(Step {
                id: ids[i].clone(),
                kind,
                next,
            });
        }
        for (i, field, t) in templates {
            let c = Ctx {
                id: &ids[i],
                index: i,
            };
            let used = template_variables(&t)
                .map_err(|e| c.err(format!("{field}: the template does not parse: {e}")))?;
            if let Some(unknown) = used.iter().find(|v| !defined.contains(*v)) {
                return Err(c.err(format!(
                    "{field} uses the unknown variable {unknown:?}; known: {}",
                    defined.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        for (i, k, v) in branch_vars {
            if !defined.contains(&v) {
                let c = Ctx {
                    id: &ids[i],
                    index: i,
                };
                return Err(c.err(format!(
                    "conditions[{k}].field uses the unknown variable {v:?}; known: {}",
                    defined.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let flow = Flow {
            steps,
            index,
            defaults: variables.clone(),
            agents,
            boards,
            members,
        };
        flow.check_graph()?;
        Ok(flow)
    }

    fn edges(&self, i: usize) -> Vec<usize> {
        let s = &self.steps[i];
        let mut out: Vec<&String> = Vec::new();
        match &s.kind {
            StepKind::Branch {
                then, otherwise, ..
            } => {
                out.push(then);
                out.push(otherwise);
            }
            StepKind::WaitForReply {
                on_timeout: Some(t),
                ..
            } => {
                out.push(t);
                out.extend(s.next.as_ref());
            }
            _ => out.extend(s.next.as_ref()),
        }
        out.into_iter()
            .filter_map(|id| self.index.get(id).copied())
            .collect()
    }

    /// Every step is reachable from the first, and every cycle passes through a wait.
    fn check_graph(&self) -> Result<(), FlowError> {
        let n = self.steps.len();
        let mut seen = vec![false; n];
        let mut stack = vec![0];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            stack.extend(self.edges(i));
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(FlowError {
                step: Some(self.steps[i].id.clone()),
                index: Some(i),
                message: format!("step {:?}: no step leads to it", self.steps[i].id),
            });
        }
        // A cycle of steps none of which waits would spin: colour DFS over the graph
        // without its waiting steps.
        let mut colour = vec![0u8; n];
        for start in 0..n {
            if colour[start] != 0 || self.steps[start].kind.waits() {
                continue;
            }
            let mut stack = vec![(start, 0usize)];
            colour[start] = 1;
            while let Some((i, k)) = stack.pop() {
                let edges = self.edges(i);
                if let Some(&j) = edges.get(k) {
                    stack.push((i, k + 1));
                    if self.steps[j].kind.waits() {
                        continue;
                    }
                    match colour[j] {
                        0 => {
                            colour[j] = 1;
                            stack.push((j, 0));
                        }
                        1 => {
                            return Err(FlowError {
                                step: Some(self.steps[j].id.clone()),
                                index: Some(j),
                                message: format!(
                                    "step {:?}: it is part of a cycle with no wait or wait_for_reply, which would never stop",
                                    self.steps[j].id
                                ),
                            });
                        }
                        _ => {}
                    }
                } else {
                    colour[i] = 2;
                }
            }
        }
        Ok(())
    }

    pub fn step(&self, id: &str) -> Option<&Step> {
        self.index.get(id).map(|&i| &self.steps[i])
    }

    pub fn first(&self) -> &Step {
        &self.steps[0]
    }
}

impl std::fmt::Display for FlowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl std::error::Error for FlowError {}

impl FlowError {
    /// The message for a client, naming the step once.
    pub fn describe(&self) -> String {
        match &self.step {
            Some(s) if !self.message.starts_with("step ") => {
                format!("step {s:?}: {}", self.message)
            }
            _ => self.message.clone(),
        }
    }
}

/// An execution's state between steps: it lives in Postgres between them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecState {
    /// The step to run; `None` before the first.
    pub current: Option<String>,
    pub vars: BTreeMap<String, Value>,
    /// Steps run so far: the next step's number, part of its idempotency key.
    pub seq: u32,
}

/// Why the interpreter is called.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Run the current step.
    Fresh,
    /// The current step's `wait` is over.
    WaitElapsed,
    /// The contact answered the current `wait_for_reply`.
    Reply(String),
    /// The current `wait_for_reply` timed out.
    ReplyTimedOut,
}

/// How long a suspended execution waits, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Timer { secs: u64 },
    Reply { timeout_secs: u64 },
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A step without I/O ran (the state moved on): record it and call again.
    Ran {
        step_id: String,
        kind: &'static str,
        output: Value,
    },
    /// Send this, then call [`Interpreter::complete`].
    Send {
        step_id: String,
        message: Outbound,
    },
    /// Ask the agent for a reply to the chat and send it, then [`Interpreter::complete`].
    AiReply {
        step_id: String,
        agent_id: uuid::Uuid,
    },
    /// Make the call, then [`Interpreter::complete`] with `{"status", "body"}`.
    Http {
        step_id: String,
        call: HttpCall,
    },
    /// Apply, then [`Interpreter::complete`].
    Bot {
        step_id: String,
        action: BotAction,
    },
    /// Apply with the step's record, then [`Interpreter::complete`].
    Platform {
        step_id: String,
        action: PlatformAction,
    },
    /// Persist and sleep: the current step waits.
    Suspend {
        step_id: String,
        wait: Wait,
    },
    Finished,
    Failed {
        step_id: Option<String>,
        error: String,
    },
}

/// A title rendered: not empty, and cut at [`MAX_TITLE_CHARS`] (a long variable must not fail
/// the step).
fn render_title(t: &str, vars: &BTreeMap<String, Value>) -> Result<String, String> {
    let out = render(t, vars)?;
    let out = out.trim();
    if out.is_empty() {
        return Err("the title rendered empty".into());
    }
    Ok(out.chars().take(MAX_TITLE_CHARS).collect())
}

/// Runs a flow over an execution's state.
pub struct Interpreter<'a> {
    pub flow: &'a Flow,
}

impl Interpreter<'_> {
    fn current<'s>(&'s self, state: &mut ExecState) -> Option<&'s Step> {
        match &state.current {
            None => {
                let first = self.flow.first();
                state.current = Some(first.id.clone());
                Some(first)
            }
            Some(id) => self.flow.step(id),
        }
    }

    fn go(state: &mut ExecState, next: Option<&String>) {
        state.current = Some(next.cloned().unwrap_or_default());
        state.seq += 1;
    }

    /// The next thing to do. `facts` give branch conditions the time and the message.
    pub fn next(&self, state: &mut ExecState, resume: Resume, facts: Facts<'_>) -> Action {
        if state.seq >= MAX_STEPS_RUN {
            return Action::Failed {
                step_id: state.current.clone(),
                error: format!("ran {MAX_STEPS_RUN} steps: stopped"),
            };
        }
        if state.current.as_deref() == Some("") {
            return Action::Finished;
        }
        let Some(step) = self.current(state) else {
            return Action::Failed {
                step_id: state.current.clone(),
                error: "the execution points at a step the flow does not have".into(),
            };
        };
        let id = step.id.clone();
        let render_or_fail = |t: &str, vars: &BTreeMap<String, Value>| render(t, vars);
        match (&step.kind, resume) {
            (StepKind::End, _) => {
                Self::go(state, None);
                Action::Ran {
                    step_id: id,
                    kind: "end",
                    output: Value::Null,
                }
            }
            (StepKind::SetVariable { name, value }, _) => {
                let v = match value {
                    Value::String(t) => match render_or_fail(t, &state.vars) {
                        Ok(s) => Value::String(s),
                        Err(e) => {
                            return Action::Failed {
                                step_id: Some(id),
                                error: e,
                            };
                        }
                    },
                    other => other.clone(),
                };
                state.vars.insert(name.clone(), v.clone());
                Self::go(state, step.next.as_ref());
                Action::Ran {
                    step_id: id,
                    kind: "set_variable",
                    output: json!({ name: v }),
                }
            }
            (
                StepKind::Branch {
                    conditions,
                    any,
                    then,
                    otherwise,
                },
                _,
            ) => {
                let vars = state.vars.clone();
                let f = Facts {
                    vars: Some(&vars),
                    ..facts
                };
                let hit = if *any {
                    conditions.iter().any(|c| c.matches(&f))
                } else {
                    conditions.iter().all(|c| c.matches(&f))
                };
                let to = if hit { then } else { otherwise };
                Self::go(state, Some(to));
                Action::Ran {
                    step_id: id,
                    kind: "branch",
                    output: json!({ "matched": hit, "next": to }),
                }
            }
            (StepKind::Wait { .. }, Resume::WaitElapsed) => {
                Self::go(state, step.next.as_ref());
                Action::Ran {
                    step_id: id,
                    kind: "wait",
                    output: json!({ "waited": true }),
                }
            }
            (StepKind::Wait { seconds }, _) => Action::Suspend {
                step_id: id,
                wait: Wait::Timer { secs: *seconds },
            },
            (StepKind::WaitForReply { variable, .. }, Resume::Reply(text)) => {
                state
                    .vars
                    .insert(variable.clone(), Value::String(text.clone()));
                Self::go(state, step.next.as_ref());
                Action::Ran {
                    step_id: id,
                    kind: "wait_for_reply",
                    output: json!({ variable: text }),
                }
            }
            (StepKind::WaitForReply { on_timeout, .. }, Resume::ReplyTimedOut) => {
                let to = on_timeout.as_ref().or(step.next.as_ref());
                Self::go(state, to);
                Action::Ran {
                    step_id: id,
                    kind: "wait_for_reply",
                    output: json!({ "timed_out": true }),
                }
            }
            (StepKind::WaitForReply { timeout_secs, .. }, _) => Action::Suspend {
                step_id: id,
                wait: Wait::Reply {
                    timeout_secs: *timeout_secs,
                },
            },
            (
                StepKind::SendQuickReply {
                    shortcut,
                    variables,
                },
                _,
            ) => {
                let mut rendered = BTreeMap::new();
                for (k, t) in variables {
                    match render_or_fail(t, &state.vars) {
                        Ok(v) => {
                            rendered.insert(k.clone(), v);
                        }
                        Err(e) => {
                            return Action::Failed {
                                step_id: Some(id),
                                error: e,
                            };
                        }
                    }
                }
                Action::Send {
                    step_id: id,
                    message: Outbound::QuickReply {
                        shortcut: shortcut.clone(),
                        variables: rendered,
                    },
                }
            }
            (StepKind::SendText { text }, _) => match render_or_fail(text, &state.vars) {
                Ok(t) if t.trim().is_empty() => Action::Failed {
                    step_id: Some(id),
                    error: "the text rendered empty".into(),
                },
                Ok(t) => Action::Send {
                    step_id: id,
                    message: Outbound::Text { text: t },
                },
                Err(e) => Action::Failed {
                    step_id: Some(id),
                    error: e,
                },
            },
            (
                StepKind::SendMedia {
                    media_type,
                    url,
                    caption,
                    filename,
                },
                _,
            ) => {
                let url = match render_or_fail(url, &state.vars) {
                    Ok(u) => u,
                    Err(e) => {
                        return Action::Failed {
                            step_id: Some(id),
                            error: e,
                        };
                    }
                };
                let caption = match caption
                    .as_ref()
                    .map(|c| render_or_fail(c, &state.vars))
                    .transpose()
                {
                    Ok(c) => c,
                    Err(e) => {
                        return Action::Failed {
                            step_id: Some(id),
                            error: e,
                        };
                    }
                };
                Action::Send {
                    step_id: id,
                    message: Outbound::Media {
                        media_type: media_type.clone(),
                        url,
                        caption,
                        filename: filename.clone(),
                    },
                }
            }
            (StepKind::AiReply { agent_id }, _) => Action::AiReply {
                step_id: id,
                agent_id: *agent_id,
            },
            (StepKind::Bot { action }, _) => Action::Bot {
                step_id: id,
                action: *action,
            },
            (
                StepKind::CreateCard {
                    board_id,
                    column,
                    title,
                    description,
                    assignee_id,
                },
                _,
            ) => {
                let rendered = || -> Result<PlatformAction, String> {
                    Ok(PlatformAction::CreateCard {
                        board_id: *board_id,
                        column: column.clone(),
                        title: match title {
                            Some(t) => Some(render_title(t, &state.vars)?),
                            None => None,
                        },
                        description: description
                            .as_ref()
                            .map(|t| render(t, &state.vars))
                            .transpose()?
                            .filter(|d| !d.trim().is_empty()),
                        assignee_id: *assignee_id,
                    })
                };
                match rendered() {
                    Ok(action) => Action::Platform {
                        step_id: id,
                        action,
                    },
                    Err(error) => Action::Failed {
                        step_id: Some(id),
                        error,
                    },
                }
            }
            (StepKind::MoveCard { board_id, column }, _) => Action::Platform {
                step_id: id,
                action: PlatformAction::MoveCard {
                    board_id: *board_id,
                    column: column.clone(),
                },
            },
            (
                StepKind::Notify {
                    title,
                    body,
                    level,
                    member_id,
                },
                _,
            ) => {
                let rendered = || -> Result<PlatformAction, String> {
                    Ok(PlatformAction::Notify {
                        title: render_title(title, &state.vars)?,
                        body: body
                            .as_ref()
                            .map(|t| render(t, &state.vars))
                            .transpose()?
                            .unwrap_or_default(),
                        level: level.clone(),
                        member_id: *member_id,
                    })
                };
                match rendered() {
                    Ok(action) => Action::Platform {
                        step_id: id,
                        action,
                    },
                    Err(error) => Action::Failed {
                        step_id: Some(id),
                        error,
                    },
                }
            }
            (
                StepKind::HttpRequest {
                    method,
                    url,
                    headers,
                    body,
                    timeout_secs,
                    ..
                },
                _,
            ) => {
                let r = || -> Result<HttpCall, String> {
                    Ok(HttpCall {
                        method: method.clone(),
                        url: render(url, &state.vars)?,
                        headers: headers
                            .iter()
                            .map(|(k, v)| Ok((k.clone(), render(v, &state.vars)?)))
                            .collect::<Result<_, String>>()?,
                        body: match body {
                            None => None,
                            Some(Value::String(t)) => Some(render(t, &state.vars)?),
                            Some(other) => Some(other.to_string()),
                        },
                        timeout_secs: *timeout_secs,
                    })
                };
                match r() {
                    Ok(call) => Action::Http { step_id: id, call },
                    Err(e) => Action::Failed {
                        step_id: Some(id),
                        error: e,
                    },
                }
            }
        }
    }

    /// The current step's effect is done (`output`: an HTTP call's `{"status", "body"}`):
    /// stores its variable and moves on.
    pub fn complete(&self, state: &mut ExecState, output: Option<Value>) {
        let Some(step) = state.current.as_deref().and_then(|id| self.flow.step(id)) else {
            return;
        };
        if let (
            StepKind::HttpRequest {
                variable: Some(v), ..
            },
            Some(out),
        ) = (&step.kind, output)
        {
            state.vars.insert(v.clone(), out);
        }
        Self::go(state, step.next.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn facts() -> Facts<'static> {
        Facts {
            text: None,
            from: None,
            kind: None,
            labels: &[],
            at: Utc::now(),
            tz: chrono_tz::UTC,
            vars: None,
            column: None,
            board: None,
        }
    }

    fn parse(steps: Value) -> Result<Flow, FlowError> {
        Flow::parse(&steps, &BTreeMap::new())
    }

    /// Runs a flow to its first suspension or its end, answering effects as done.
    fn run(flow: &Flow, state: &mut ExecState, mut resume: Resume) -> Vec<Action> {
        let i = Interpreter { flow };
        let mut out = Vec::new();
        loop {
            let a = i.next(state, resume.clone(), facts());
            resume = Resume::Fresh;
            out.push(a.clone());
            match a {
                Action::Ran { .. } => {}
                Action::Send { .. }
                | Action::AiReply { .. }
                | Action::Bot { .. }
                | Action::Platform { .. } => i.complete(state, None),
                Action::Http { .. } => {
                    i.complete(state, Some(json!({"status": 200, "body": {"ok": true}})))
                }
                _ => return out,
            }
        }
    }

    #[test]
    fn a_question_waits_for_the_reply_and_branches_on_it() {
        let flow = parse(json!([
            {"id": "ask", "type": "send_text", "text": "Hi {{contact_name}}, want the menu? (yes/no)"},
            {"id": "answer", "type": "wait_for_reply", "timeout_secs": 600, "variable": "choice", "on_timeout": "bye"},
            {"id": "check", "type": "branch", "conditions": [{"field": "choice", "op": "any", "value": ["yes", "sim"]}], "then": "menu", "else": "bye"},
            {"id": "menu", "type": "send_text", "text": "Here: {{choice}}!", "next": "end"},
            {"id": "bye", "type": "send_text", "text": "Bye"},
            {"id": "end", "type": "end"}
        ]))
        .unwrap();
        let mut s = ExecState::default();
        s.vars.insert("contact_name".into(), json!("Lia"));
        let a = run(&flow, &mut s, Resume::Fresh);
        assert_eq!(
            a[0],
            Action::Send {
                step_id: "ask".into(),
                message: Outbound::Text {
                    text: "Hi Lia, want the menu? (yes/no)".into()
                }
            }
        );
        assert_eq!(
            a[1],
            Action::Suspend {
                step_id: "answer".into(),
                wait: Wait::Reply { timeout_secs: 600 }
            }
        );
        let mut yes = s.clone();
        let a = run(&flow, &mut yes, Resume::Reply("Yes please".into()));
        assert!(a.contains(&Action::Send {
            step_id: "menu".into(),
            message: Outbound::Text {
                text: "Here: Yes please!".into()
            }
        }));
        assert_eq!(a.last(), Some(&Action::Finished));
        let a = run(&flow, &mut s, Resume::ReplyTimedOut);
        assert!(a.contains(&Action::Send {
            step_id: "bye".into(),
            message: Outbound::Text { text: "Bye".into() }
        }));
        assert_eq!(a.last(), Some(&Action::Finished));
    }

    #[test]
    fn a_wait_suspends_then_goes_on() {
        let flow = parse(json!([
            {"id": "a", "type": "wait", "seconds": 5},
            {"id": "b", "type": "send_text", "text": "later"}
        ]))
        .unwrap();
        let mut s = ExecState::default();
        assert_eq!(
            run(&flow, &mut s, Resume::Fresh),
            vec![Action::Suspend {
                step_id: "a".into(),
                wait: Wait::Timer { secs: 5 }
            }]
        );
        assert_eq!(s.seq, 0);
        let a = run(&flow, &mut s, Resume::WaitElapsed);
        assert!(matches!(&a[1], Action::Send { step_id, .. } if step_id == "b"));
        assert_eq!(a.last(), Some(&Action::Finished));
        assert_eq!(s.seq, 2, "each step run counts once");
    }

    #[test]
    fn http_results_become_variables() {
        let flow = parse(json!([
            {"id": "get", "type": "http_request", "url": "https://shop.example/orders/{{text}}", "variable": "order"},
            {"id": "say", "type": "send_text", "text": "ok={{order.body.ok}} status={{order.status}}"}
        ]))
        .unwrap();
        let mut s = ExecState::default();
        s.vars.insert("text".into(), json!("42"));
        let a = run(&flow, &mut s, Resume::Fresh);
        assert!(
            matches!(&a[0], Action::Http { call, .. } if call.url == "https://shop.example/orders/42")
        );
        assert_eq!(
            a[1],
            Action::Send {
                step_id: "say".into(),
                message: Outbound::Text {
                    text: "ok=true status=200".into()
                }
            }
        );
    }

    #[test]
    fn validation_names_the_step_at_fault() {
        let e = |steps: Value| parse(steps).unwrap_err();
        let err = e(json!([{"id": "a", "type": "send_text", "text": "x", "next": "nowhere"}]));
        assert_eq!(err.step.as_deref(), Some("a"));
        assert!(
            err.describe().contains("unknown step \"nowhere\""),
            "{}",
            err.describe()
        );
        let err =
            e(json!([{"id": "a", "type": "end"}, {"id": "b", "type": "send_text", "text": "x"}]));
        assert_eq!(err.step.as_deref(), Some("b"));
        assert!(err.describe().contains("no step leads to it"));
        let err = e(json!([
            {"id": "a", "type": "send_text", "text": "x"},
            {"id": "b", "type": "branch", "conditions": [{"field": "text", "op": "equals", "value": "y"}], "then": "a", "else": "c"},
            {"id": "c", "type": "end"}
        ]));
        assert!(err.describe().contains("cycle"), "{}", err.describe());
        let err = e(json!([{"id": "a", "type": "send_text", "text": "Hi {{nickname}}"}]));
        assert_eq!(err.step.as_deref(), Some("a"));
        assert!(err.describe().contains("unknown variable \"nickname\""));
        let err = e(
            json!([{"id": "a", "type": "send_text", "text": "{% for i in range(9) %}x{% endfor %}"}]),
        );
        assert!(
            err.describe().contains("not {% statements %}"),
            "{}",
            err.describe()
        );
        let err = e(json!([{"id": "a", "type": "run_function"}]));
        assert!(err.describe().contains("arrives with user functions"));
        let err = e(json!([{"id": "a", "type": "create_card"}]));
        assert!(err.describe().contains("board_id is required"));
        let err = e(json!([{"id": "a", "type": "move_card", "board_id": uuid::Uuid::nil()}]));
        assert!(err.describe().contains("column is required"));
        let err = e(json!([{"id": "a", "type": "notify", "title": "x", "level": "loud"}]));
        assert!(err.describe().contains("level is info"));
        let err = e(json!([{"id": "a", "type": "notify", "title": "Hi {{ nobody }}"}]));
        assert!(err.describe().contains("unknown variable \"nobody\""));
        let err = e(json!([{"id": "a", "type": "teleport"}]));
        assert!(err.describe().contains("unknown type"));
        let err =
            e(json!([{"id": "a", "type": "send_text", "text": "x"}, {"id": "a", "type": "end"}]));
        assert!(err.describe().contains("used by another step"));
        let err = e(json!([{"id": "a", "type": "wait", "seconds": 0}]));
        assert!(err.describe().contains("seconds"));
        // A cycle through a wait is a loop that paces itself: allowed.
        parse(json!([
            {"id": "a", "type": "send_text", "text": "ping"},
            {"id": "w", "type": "wait", "seconds": 60, "next": "a"}
        ]))
        .unwrap();
    }

    #[test]
    fn card_and_notify_steps_render_what_the_driver_applies() {
        let board = uuid::Uuid::now_v7();
        let member = uuid::Uuid::now_v7();
        let flow = parse(json!([
            {"id": "c", "type": "create_card", "board_id": board, "title": "Lead {{ contact_name }}"},
            {"id": "m", "type": "move_card", "board_id": board, "column": "Won"},
            {"id": "n", "type": "notify", "title": "New lead {{ phone }}", "member_id": member, "level": "warning"}
        ]))
        .unwrap();
        assert_eq!(flow.boards.iter().copied().collect::<Vec<_>>(), vec![board]);
        assert!(flow.members.contains(&member));
        let mut s = ExecState::default();
        s.vars.insert("contact_name".into(), json!("Lia"));
        s.vars.insert("phone".into(), json!("+49151"));
        let out = run(&flow, &mut s, Resume::Fresh);
        let platform: Vec<&PlatformAction> = out
            .iter()
            .filter_map(|a| match a {
                Action::Platform { action, .. } => Some(action),
                _ => None,
            })
            .collect();
        assert_eq!(
            platform,
            vec![
                &PlatformAction::CreateCard {
                    board_id: board,
                    column: None,
                    title: Some("Lead Lia".into()),
                    description: None,
                    assignee_id: None,
                },
                &PlatformAction::MoveCard {
                    board_id: board,
                    column: "Won".into(),
                },
                &PlatformAction::Notify {
                    title: "New lead +49151".into(),
                    body: String::new(),
                    level: "warning".into(),
                    member_id: Some(member),
                },
            ]
        );
        assert_eq!(out.last(), Some(&Action::Finished));
        // A title that renders empty fails its step, by name.
        let flow =
            parse(json!([{"id": "n", "type": "notify", "title": "{{ contact_name }}"}])).unwrap();
        let mut s = ExecState::default();
        assert!(matches!(
            &run(&flow, &mut s, Resume::Fresh)[0],
            Action::Failed { step_id: Some(id), error } if id == "n" && error.contains("empty")
        ));
    }

    #[test]
    fn declared_variables_are_known() {
        let mut vars = BTreeMap::new();
        vars.insert("coupon".to_owned(), json!("XMAS"));
        Flow::parse(
            &json!([{"id": "a", "type": "send_text", "text": "Use {{coupon}}"}]),
            &vars,
        )
        .unwrap();
    }

    #[test]
    fn a_runaway_execution_stops() {
        let flow = parse(json!([
            {"id": "a", "type": "set_variable", "name": "n", "value": 1},
            {"id": "w", "type": "wait", "seconds": 1, "next": "a"}
        ]))
        .unwrap();
        let mut s = ExecState {
            seq: MAX_STEPS_RUN,
            ..ExecState::default()
        };
        assert!(matches!(
            run(&flow, &mut s, Resume::Fresh)[0],
            Action::Failed { .. }
        ));
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing answers (never panics), and a flow that parses
        /// runs to a suspension or an end within its step budget.
        #[test]
        fn parsing_and_running_never_panic(n in 1usize..8, seed in proptest::collection::vec((0u8..10, 0usize..8, 0usize..8), 8)) {
            let types = ["send_text", "wait", "wait_for_reply", "branch", "set_variable", "end", "bot", "http_request", "send_media", "teleport"];
            let steps: Vec<Value> = (0..n).map(|i| {
                let (t, a, b) = seed[i];
                let ty = types[t as usize];
                let mut s = json!({"id": format!("s{i}"), "type": ty});
                match ty {
                    "send_text" => { s["text"] = json!("hi {{text}}"); }
                    "wait" => { s["seconds"] = json!(1); }
                    "wait_for_reply" => { s["timeout_secs"] = json!(5); }
                    "branch" => { s["conditions"] = json!([{"field": "text", "op": "contains", "value": "x"}]); s["then"] = json!(format!("s{}", a % n)); s["else"] = json!(format!("s{}", b % n)); }
                    "set_variable" => { s["name"] = json!("v"); s["value"] = json!("{{text}}"); }
                    "bot" => { s["action"] = json!("pause"); }
                    "http_request" => { s["url"] = json!("https://x.example/{{text}}"); }
                    "send_media" => { s["url"] = json!("https://x.example/a.png"); s["media_type"] = json!("image"); }
                    "send_quick_reply" => { s["shortcut"] = json!("/price"); s["variables"] = json!({"name": "{{text}}"}); }
                    _ => {}
                }
                if a % 3 == 0 { s["next"] = json!(format!("s{}", b % n)); }
                s
            }).collect();
            if let Ok(flow) = parse(Value::Array(steps)) {
                let mut s = ExecState::default();
                let mut resume = Resume::Fresh;
                for _ in 0..200 {
                    let actions = run(&flow, &mut s, resume.clone());
                    match actions.last() {
                        Some(Action::Suspend { wait: Wait::Timer { .. }, .. }) => resume = Resume::WaitElapsed,
                        Some(Action::Suspend { .. }) => resume = Resume::Reply("x".into()),
                        _ => break,
                    }
                }
            }
        }
    }
}
