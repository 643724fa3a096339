//! A session's WhatsApp groups: what the tenant asks of them live (create, read, rename,
//! participants, invite links, join, leave) and what WhatsApp tells about them
//! (`w:gp2` notifications, told to the tenant as `group.*` events).

use std::sync::Arc;

use actix::prelude::*;
use wacore::stanza::groups::GroupNotificationAction;
use wacore::types::events::GroupUpdate;
use whatsapp_rust::IqError;
use whatsapp_rust::features::{
    GroupCreateOptions, GroupDescription, GroupError, GroupMetadata, GroupParticipantOptions,
    GroupSubject, ParticipantType, PreviousDescription,
};
use whatsapp_rust::wacore_binary::JidExt as _;
use whatsapp_rust::{Client, Jid};

use super::contacts::contact_of;
use super::{SessionActor, SessionCommandError};

/// A participant's rank in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRole {
    Member,
    Admin,
    Superadmin,
}

impl GroupRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::Member => "member",
            GroupRole::Admin => "admin",
            GroupRole::Superadmin => "superadmin",
        }
    }
}

/// One participant of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// `+<digits>`, when WhatsApp or the client's LID mapping tells it.
    pub phone: Option<String>,
    /// The participant's JID as the group addresses it.
    pub jid: String,
    pub role: GroupRole,
}

/// A group as WhatsApp describes it to this account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// `<id>@g.us`.
    pub jid: String,
    pub subject: String,
    pub description: Option<String>,
    /// `+<digits>` (or `<lid>@lid`).
    pub creator: Option<String>,
    /// Unix seconds.
    pub created_at: Option<u64>,
    pub participants: Vec<GroupMember>,
}

/// What an admin does to participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantAction {
    Add,
    Remove,
    Promote,
    Demote,
}

impl ParticipantAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantAction::Add => "add",
            ParticipantAction::Remove => "remove",
            ParticipantAction::Promote => "promote",
            ParticipantAction::Demote => "demote",
        }
    }
}

/// How one participant change went: `error` is WhatsApp's code (`403` privacy, `404` not
/// found, `409` already in the group…), `None` when it was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantOutcome {
    pub phone: String,
    pub error: Option<String>,
}

/// Something a tenant asks of a session's groups, answered at once by WhatsApp.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<GroupAnswer, SessionCommandError>")]
pub enum GroupCommand {
    /// Create a group with these numbers (digits).
    Create {
        subject: String,
        participants: Vec<String>,
    },
    List,
    Get {
        group: String,
    },
    /// Change the subject and/or the description (`Some(None)` removes it).
    Update {
        group: String,
        subject: Option<String>,
        description: Option<Option<String>>,
    },
    Participants {
        group: String,
        action: ParticipantAction,
        phones: Vec<String>,
    },
    InviteLink {
        group: String,
        reset: bool,
    },
    Join {
        code: String,
    },
    Leave {
        group: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAnswer {
    Done,
    Group(GroupInfo),
    Groups(Vec<GroupInfo>),
    Participants(Vec<ParticipantOutcome>),
    InviteLink(String),
    /// Joined this group (`<id>@g.us`).
    Joined(String),
}

/// What WhatsApp said happened to a group, for the tenant's `group.*` events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    /// `<id>@g.us`.
    pub group: String,
    /// Who did it: `+<digits>` (or `<lid>@lid`).
    pub by: Option<String>,
    pub kind: GroupChangeKind,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChangeKind {
    /// The account was put in a new group (`group.created`).
    Created {
        subject: String,
    },
    /// Participants joined, left, were removed, promoted or demoted (`group.participants`).
    Participants {
        action: &'static str,
        participants: Vec<String>,
    },
    /// The subject or description changed (`group.updated`).
    Subject {
        subject: String,
    },
    Description {
        description: Option<String>,
    },
}

impl GroupChange {
    /// The tenant's event type.
    pub fn event_type(&self) -> &'static str {
        match self.kind {
            GroupChangeKind::Created { .. } => "group.created",
            GroupChangeKind::Participants { .. } => "group.participants",
            GroupChangeKind::Subject { .. } | GroupChangeKind::Description { .. } => {
                "group.updated"
            }
        }
    }

    /// From a `w:gp2` notification; `None` for the changes the gateway does not tell.
    pub fn from_update(update: &GroupUpdate) -> Option<GroupChange> {
        let kind = match &update.action {
            GroupNotificationAction::Create { raw } => GroupChangeKind::Created {
                subject: raw
                    .get_optional_child("group")
                    .and_then(|g| g.attrs.get("subject"))
                    .map(|s| s.as_str().into_owned())
                    .unwrap_or_default(),
            },
            GroupNotificationAction::Add { participants, .. }
            | GroupNotificationAction::Remove { participants, .. }
            | GroupNotificationAction::Promote { participants }
            | GroupNotificationAction::Demote { participants } => GroupChangeKind::Participants {
                action: match &update.action {
                    GroupNotificationAction::Add { .. } => "add",
                    GroupNotificationAction::Remove { .. } => "remove",
                    GroupNotificationAction::Promote { .. } => "promote",
                    _ => "demote",
                },
                participants: participants
                    .iter()
                    .map(|p| contact_of(p.phone_number.as_ref().unwrap_or(&p.jid)))
                    .collect(),
            },
            GroupNotificationAction::Subject { subject, .. } => GroupChangeKind::Subject {
                subject: subject.clone(),
            },
            GroupNotificationAction::Description { description, .. } => {
                GroupChangeKind::Description {
                    description: description.clone(),
                }
            }
            _ => return None,
        };
        Some(GroupChange {
            group: update.group_jid.to_string(),
            by: update
                .participant_pn
                .as_ref()
                .or(update.participant.as_ref())
                .map(contact_of),
            kind,
            at: u64::try_from(update.timestamp.timestamp()).unwrap_or(0),
        })
    }
}

/// A group JID from the API's `<id>@g.us`.
pub fn group_jid(group: &str) -> Result<Jid, SessionCommandError> {
    group
        .parse::<Jid>()
        .ok()
        .filter(|j| j.is_group())
        .ok_or_else(|| SessionCommandError::Invalid(format!("{group} is not a group JID")))
}

fn refused(e: GroupError) -> SessionCommandError {
    match e {
        GroupError::Iq(IqError::ServerError { code, text, .. }) => {
            SessionCommandError::Refused { code, text }
        }
        GroupError::InvalidRequest(m) => SessionCommandError::Invalid(m),
        GroupError::DescriptionConflict => SessionCommandError::Refused {
            code: 409,
            text: "conflict".into(),
        },
        other => SessionCommandError::Upstream(other.to_string()),
    }
}

fn member_of(p: &whatsapp_rust::features::GroupParticipant) -> GroupMember {
    let phone = if p.jid.is_pn() {
        Some(format!("+{}", p.jid.user))
    } else {
        p.phone_number.as_ref().map(|pn| format!("+{}", pn.user))
    };
    GroupMember {
        phone,
        jid: p.jid.to_string(),
        role: match p.participant_type {
            ParticipantType::SuperAdmin => GroupRole::Superadmin,
            ParticipantType::Admin => GroupRole::Admin,
            _ => GroupRole::Member,
        },
    }
}

fn info_of(m: &GroupMetadata) -> GroupInfo {
    GroupInfo {
        jid: m.id.to_string(),
        subject: m.subject.clone(),
        description: m.description.clone(),
        creator: m.creator_pn.as_ref().or(m.creator.as_ref()).map(contact_of),
        created_at: m.creation_time,
        participants: m.participants.iter().map(member_of).collect(),
    }
}

fn subject_of(s: String) -> Result<GroupSubject, SessionCommandError> {
    GroupSubject::new(s).map_err(|e| SessionCommandError::Invalid(e.to_string()))
}

async fn run_group(
    client: Arc<Client>,
    cmd: GroupCommand,
) -> Result<GroupAnswer, SessionCommandError> {
    let groups = client.groups();
    match cmd {
        GroupCommand::Create {
            subject,
            participants,
        } => {
            let options = GroupCreateOptions::new(subject_of(subject)?.into_string())
                .with_participants(
                    participants
                        .iter()
                        .map(|p| GroupParticipantOptions::from_phone(Jid::pn(p.as_str())))
                        .collect(),
                );
            let created = groups.create_group(options).await.map_err(refused)?;
            Ok(GroupAnswer::Group(info_of(&created.metadata)))
        }
        GroupCommand::List => {
            let mut all: Vec<GroupInfo> = groups
                .get_participating()
                .await
                .map_err(refused)?
                .values()
                .map(info_of)
                .collect();
            all.sort_by(|a, b| a.jid.cmp(&b.jid));
            Ok(GroupAnswer::Groups(all))
        }
        GroupCommand::Get { group } => {
            let meta = groups
                .get_metadata(&group_jid(&group)?)
                .await
                .map_err(refused)?;
            Ok(GroupAnswer::Group(info_of(&meta)))
        }
        GroupCommand::Update {
            group,
            subject,
            description,
        } => {
            let jid = group_jid(&group)?;
            if let Some(subject) = subject {
                groups
                    .set_subject(jid.clone(), subject_of(subject)?)
                    .await
                    .map_err(refused)?;
            }
            if let Some(description) = description {
                let description = description
                    .map(GroupDescription::new)
                    .transpose()
                    .map_err(|e| SessionCommandError::Invalid(e.to_string()))?;
                groups
                    .set_description(jid.clone(), description, PreviousDescription::Resolve)
                    .await
                    .map_err(refused)?;
            }
            let meta = groups.get_metadata(&jid).await.map_err(refused)?;
            Ok(GroupAnswer::Group(info_of(&meta)))
        }
        GroupCommand::Participants {
            group,
            action,
            phones,
        } => {
            let jid = group_jid(&group)?;
            let jids: Vec<Jid> = phones.iter().map(|p| Jid::pn(p.as_str())).collect();
            let results = match action {
                ParticipantAction::Add => groups.add_participants(jid, &jids).await,
                ParticipantAction::Remove => groups.remove_participants(jid, &jids).await,
                ParticipantAction::Promote => groups.promote_participants(jid, &jids).await,
                ParticipantAction::Demote => groups.demote_participants(jid, &jids).await,
            }
            .map_err(refused)?;
            let outcomes = phones
                .into_iter()
                .map(|phone| {
                    let r = results.iter().find(|r| {
                        r.jid.user == phone.as_str()
                            || r.phone_number
                                .as_ref()
                                .is_some_and(|p| p.user == phone.as_str())
                    });
                    ParticipantOutcome {
                        error: match r {
                            Some(r) => r.error.clone(),
                            None => Some("404".into()),
                        },
                        phone: format!("+{phone}"),
                    }
                })
                .collect();
            Ok(GroupAnswer::Participants(outcomes))
        }
        GroupCommand::InviteLink { group, reset } => Ok(GroupAnswer::InviteLink(
            groups
                .get_invite_link(group_jid(&group)?, reset)
                .await
                .map_err(refused)?,
        )),
        GroupCommand::Join { code } => {
            let joined = groups.join_with_invite_code(&code).await.map_err(refused)?;
            Ok(GroupAnswer::Joined(joined.group_jid().to_string()))
        }
        GroupCommand::Leave { group } => {
            groups.leave(group_jid(&group)?).await.map_err(refused)?;
            Ok(GroupAnswer::Done)
        }
    }
}

impl Handler<GroupCommand> for SessionActor {
    type Result = ResponseFuture<Result<GroupAnswer, SessionCommandError>>;

    fn handle(&mut self, cmd: GroupCommand, _ctx: &mut Self::Context) -> Self::Result {
        self.run_live_request(|client| run_group(client, cmd))
    }
}

impl SessionActor {
    /// Tells the tenant what a `w:gp2` notification said (`group.*`).
    pub(super) fn on_group_update(&mut self, update: &GroupUpdate) {
        let Some(change) = GroupChange::from_update(update) else {
            return;
        };
        let store = self.ports.contacts.clone();
        let spec = self.spec.clone();
        actix::spawn(async move {
            if let Err(e) = store.group_changed(&spec, change).await {
                tracing::warn!(session = %spec.id, error = %e, "storing a group change");
            }
        });
    }
}
