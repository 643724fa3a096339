//! Messages as the gateway stores them, and their translation to and from WhatsApp's
//! protobuf `Message`. One content type serves both directions, so what a tenant sends and
//! what a contact sends are stored and shown the same way.

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wacore::download::MediaType;
use wacore::proto_helpers::MessageExt;
use whatsapp_rust::Jid;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::download::DownloadParams;
use whatsapp_rust::media;
use whatsapp_rust::upload::UploadResponse;
use whatsapp_rust::waproto::whatsapp as wa;

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Text {
        text: String,
    },
    Location {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    Contact {
        name: String,
        /// A vCard 3.0 text; built from `name` and `phone` when not given.
        vcard: String,
    },
    /// An emoji on an earlier message (`""` removes it).
    Reaction {
        emoji: String,
    },
    /// Media, either way. Outgoing: `media_id` names the stored upload the session sends.
    /// Received: the metadata, and WhatsApp's keys to fetch and decrypt the bytes from its
    /// servers on demand (never shown by the API).
    Media {
        kind: MediaKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_id: Option<Uuid>,
        /// SHA-256 of the file, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// WhatsApp's media key (base64): decrypts the file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_key: Option<String>,
        /// SHA-256 of the encrypted file (base64): WhatsApp's CDN addresses it by this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_enc_sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mimetype: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_length: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direct_path: Option<String>,
    },
    /// A kind the gateway does not model (polls, stickers, …): stored so nothing is lost.
    Other {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
}

impl MediaKind {
    pub fn parse(kind: &str) -> Option<Self> {
        Some(match kind {
            "image" => MediaKind::Image,
            "video" => MediaKind::Video,
            "audio" => MediaKind::Audio,
            "document" => MediaKind::Document,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
        }
    }

    /// How WhatsApp encrypts and files this kind.
    pub fn media_type(self) -> MediaType {
        match self {
            MediaKind::Image => MediaType::Image,
            MediaKind::Video => MediaType::Video,
            MediaKind::Audio => MediaType::Audio,
            MediaKind::Document => MediaType::Document,
        }
    }
}

/// What a received media message needs to be fetched from WhatsApp again.
/// Whether a received message's `direct_path` is shaped like a path on WhatsApp's media
/// servers (`/v/t62.7118-24/…enc?ccb=…&oh=…`). The sender chooses it and whatsapp-rust builds
/// `https://{host}{direct_path}`: anything but a plain absolute path (`.evil.tld/`, `@host`,
/// `//host`, a backslash) would move the request to another host.
pub fn is_media_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && path.len() <= 2048
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~%?&=+,;:".contains(&b))
}

pub fn download_params(content: &Content) -> Option<DownloadParams> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let Content::Media {
        kind,
        direct_path: Some(path),
        media_key: Some(key),
        file_enc_sha256: Some(enc),
        sha256: Some(sha),
        file_length,
        ..
    } = content
    else {
        return None;
    };
    Some(DownloadParams::encrypted(
        path.clone(),
        &STANDARD.decode(key).ok()?,
        &hex::decode(sha).ok()?,
        &STANDARD.decode(enc).ok()?,
        file_length.unwrap_or_default(),
        kind.media_type(),
    ))
}

impl Content {
    /// The `type` stored and shown for this content.
    pub fn kind(&self) -> &'static str {
        match self {
            Content::Text { .. } => "text",
            Content::Location { .. } => "location",
            Content::Contact { .. } => "contact",
            Content::Reaction { .. } => "reaction",
            Content::Media { kind, .. } => kind.as_str(),
            Content::Other { .. } => "other",
        }
    }

    /// The human-readable text of the content, for listings and search.
    pub fn text(&self) -> Option<&str> {
        match self {
            Content::Text { text } => Some(text),
            Content::Location { name, .. } => name.as_deref(),
            Content::Contact { name, .. } => Some(name),
            Content::Reaction { emoji } => Some(emoji),
            Content::Media { caption, .. } => caption.as_deref(),
            Content::Other { description } => description.as_deref(),
        }
    }
}

/// The message an outgoing one replies or reacts to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotedRef {
    pub wa_id: String,
    /// The quoted message was ours (else the contact's).
    pub from_me: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A queued message a session actor is to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    pub id: Uuid,
    /// Chosen before the first attempt and reused on every retry, so WhatsApp drops a
    /// re-send after a crash as a duplicate.
    pub wa_id: String,
    /// The recipient: its number's digits, or `<lid>@lid` for a contact known only by LID.
    pub to: String,
    pub content: Content,
    pub quoted: Option<QuotedRef>,
}

impl OutgoingMessage {
    pub fn recipient(&self) -> Jid {
        crate::session::contacts::peer_jid(&self.to)
    }

    /// The protobuf WhatsApp carries. `own`: this account's number (digits), for quoting
    /// our own messages.
    /// The reply context of a message that quotes another: WhatsApp shows the quoted one.
    fn quote_context(&self, own: Option<&str>) -> Option<wa::ContextInfo> {
        let q = self.quoted.as_ref()?;
        Some(wa::ContextInfo {
            stanza_id: Some(q.wa_id.clone()),
            participant: if q.from_me {
                own.map(|o| Jid::pn(o).to_string())
            } else {
                Some(self.recipient().to_string())
            },
            quoted_message: MessageField::some(wa::Message {
                conversation: q.text.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub fn to_wa(&self, own: Option<&str>) -> wa::Message {
        let chat = self.recipient().to_string();
        match &self.content {
            Content::Text { text } => match self.quote_context(own) {
                None => wa::Message {
                    conversation: Some(text.clone()),
                    ..Default::default()
                },
                Some(context) => wa::Message {
                    extended_text_message: MessageField::some(wa::message::ExtendedTextMessage {
                        text: Some(text.clone()),
                        context_info: MessageField::some(context),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            },
            Content::Location {
                latitude,
                longitude,
                name,
                address,
            } => wa::Message {
                location_message: MessageField::some(wa::message::LocationMessage {
                    degrees_latitude: Some(*latitude),
                    degrees_longitude: Some(*longitude),
                    name: name.clone(),
                    address: address.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Content::Contact { name, vcard } => wa::Message {
                contact_message: MessageField::some(wa::message::ContactMessage {
                    display_name: Some(name.clone()),
                    vcard: Some(vcard.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Content::Reaction { emoji } => wa::Message {
                reaction_message: MessageField::some(wa::message::ReactionMessage {
                    key: MessageField::some(wa::MessageKey {
                        remote_jid: Some(chat.clone()),
                        from_me: self.quoted.as_ref().map(|q| q.from_me),
                        id: self.quoted.as_ref().map(|q| q.wa_id.clone()),
                        participant: None,
                    }),
                    text: Some(emoji.clone()),
                    sender_timestamp_ms: Some(now_ms()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            // Media needs its upload first: see `media_message`.
            Content::Media { caption, .. } => wa::Message {
                conversation: caption.clone(),
                ..Default::default()
            },
            Content::Other { description } => wa::Message {
                conversation: description.clone(),
                ..Default::default()
            },
        }
    }
}

impl OutgoingMessage {
    /// The protobuf of a media message, once its file is on WhatsApp's servers.
    pub fn media_message(&self, up: UploadResponse, own: Option<&str>) -> Option<wa::Message> {
        let Content::Media {
            kind,
            mimetype,
            caption,
            file_name,
            ..
        } = &self.content
        else {
            return None;
        };
        let context_info = self.quote_context(own).map(Box::new);
        Some(match kind {
            MediaKind::Image => media::image_message(
                up,
                media::ImageOptions {
                    caption: caption.clone(),
                    mimetype: mimetype.clone(),
                    context_info,
                    ..Default::default()
                },
            ),
            MediaKind::Video => media::video_message(
                up,
                media::VideoOptions {
                    caption: caption.clone(),
                    mimetype: mimetype.clone(),
                    context_info,
                    ..Default::default()
                },
            ),
            MediaKind::Audio => media::audio_message(
                up,
                media::AudioOptions {
                    mimetype: mimetype.clone(),
                    context_info,
                    ..Default::default()
                },
            ),
            MediaKind::Document => media::document_message(
                up,
                media::DocumentOptions {
                    mimetype: mimetype.clone(),
                    file_name: file_name.clone(),
                    title: file_name.clone(),
                    caption: caption.clone(),
                    context_info,
                    ..Default::default()
                },
            ),
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A message a contact sent to a session.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    pub wa_id: String,
    /// The sender's number, digits only, or `<lid>@lid` for a contact known only by LID.
    pub from: String,
    /// The group (`<id>@g.us`) it was written in; `None` for a 1:1 message.
    pub group: Option<String>,
    /// The session's own number (`+E.164`) as its actor knows it.
    pub to: Option<String>,
    pub push_name: Option<String>,
    pub content: Content,
    /// The WhatsApp id this message quotes or reacts to.
    pub quoted_wa_id: Option<String>,
    pub sent_at: std::time::SystemTime,
    /// Sent by the account's own phone (or another of its linked devices), to `from`: the
    /// operator answering by hand. Kept as an outgoing message of the chat.
    pub from_me: bool,
}

/// The fields every media message of WhatsApp's protobuf has.
struct MediaFields<'a> {
    mimetype: &'a Option<String>,
    file_length: Option<u64>,
    direct_path: &'a Option<String>,
    media_key: &'a Option<Vec<u8>>,
    file_sha256: &'a Option<Vec<u8>>,
    file_enc_sha256: &'a Option<Vec<u8>>,
}

macro_rules! fields {
    ($m:expr) => {
        MediaFields {
            mimetype: &$m.mimetype,
            file_length: $m.file_length,
            direct_path: &$m.direct_path,
            media_key: &$m.media_key,
            file_sha256: &$m.file_sha256,
            file_enc_sha256: &$m.file_enc_sha256,
        }
    };
}

/// Reads what a contact's message carries.
/// A contact changed one of its messages: edited it, or deleted it for everyone.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageChange {
    /// The change's own WhatsApp id (kept once, like a message's).
    pub wa_id: String,
    /// The WhatsApp id of the message changed.
    pub target_wa_id: String,
    /// The sender, as [`InboundMessage::from`].
    pub from: String,
    /// The new content; `None`: deleted for everyone.
    pub edit: Option<Content>,
    pub at: std::time::SystemTime,
}

/// The change a message carries, if it is an edit or a revoke: the id of the message it
/// changes and, for an edit, the new content.
pub fn read_change(message: &wa::Message) -> Option<(String, Option<Content>)> {
    use wa::message::protocol_message::Type;
    let p = message.get_base_message().protocol_message.as_option()?;
    let target = p.key.as_option()?.id.clone()?;
    match p.r#type {
        Some(Type::REVOKE) => Some((target, None)),
        Some(Type::MESSAGE_EDIT) => {
            let edited = p.edited_message.as_option()?;
            Some((target, Some(read_content(edited).0)))
        }
        _ => None,
    }
}

pub fn read_content(message: &wa::Message) -> (Content, Option<String>) {
    let m = message.get_base_message();
    let b64 = |b: &Option<Vec<u8>>| {
        use base64::Engine;
        b.as_ref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
    };
    let media = |kind, fields: MediaFields<'_>, caption: &Option<String>, name: Option<&String>| {
        Content::Media {
            kind,
            media_id: None,
            sha256: fields.file_sha256.as_ref().map(hex::encode),
            media_key: b64(fields.media_key),
            file_enc_sha256: b64(fields.file_enc_sha256),
            mimetype: fields.mimetype.clone(),
            file_length: fields.file_length,
            caption: caption.clone(),
            file_name: name.cloned(),
            direct_path: fields.direct_path.clone(),
        }
    };
    if let Some(c) = &m.conversation {
        return (Content::Text { text: c.clone() }, None);
    }
    if let Some(e) = m.extended_text_message.as_option() {
        let quoted = e.context_info.as_option().and_then(|c| c.stanza_id.clone());
        let text = e.text.clone().unwrap_or_default();
        return (Content::Text { text }, quoted);
    }
    let quoted_of =
        |c: &MessageField<wa::ContextInfo>| c.as_option().and_then(|c| c.stanza_id.clone());
    if let Some(i) = m.image_message.as_option() {
        let c = media(MediaKind::Image, fields!(i), &i.caption, None);
        return (c, quoted_of(&i.context_info));
    }
    if let Some(v) = m.video_message.as_option() {
        let c = media(MediaKind::Video, fields!(v), &v.caption, None);
        return (c, quoted_of(&v.context_info));
    }
    if let Some(a) = m.audio_message.as_option() {
        let c = media(MediaKind::Audio, fields!(a), &None, None);
        return (c, quoted_of(&a.context_info));
    }
    if let Some(d) = m.document_message.as_option() {
        let c = media(
            MediaKind::Document,
            fields!(d),
            &d.caption,
            d.file_name.as_ref(),
        );
        return (c, quoted_of(&d.context_info));
    }
    if let Some(l) = m.location_message.as_option() {
        return (
            Content::Location {
                latitude: l.degrees_latitude.unwrap_or_default(),
                longitude: l.degrees_longitude.unwrap_or_default(),
                name: l.name.clone(),
                address: l.address.clone(),
            },
            None,
        );
    }
    if let Some(c) = m.contact_message.as_option() {
        return (
            Content::Contact {
                name: c.display_name.clone().unwrap_or_default(),
                vcard: c.vcard.clone().unwrap_or_default(),
            },
            None,
        );
    }
    if let Some(r) = m.reaction_message.as_option() {
        return (
            Content::Reaction {
                emoji: r.text.clone().unwrap_or_default(),
            },
            r.key.as_option().and_then(|k| k.id.clone()),
        );
    }
    (Content::Other { description: None }, None)
}

/// How far an outgoing message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// The next messages a session is to send, and how fast.
#[derive(Debug, Clone, Default)]
pub struct SendBatch {
    pub messages: Vec<OutgoingMessage>,
    /// The session's send rate (its tenant's, else its tier's); 0: unpaced.
    pub rate_per_minute: u32,
}

/// A chat's key as stored and shown, from a peer as the actors carry it: `+<digits>` for a
/// number, `<lid>@lid` unchanged for a contact known only by its LID.
pub fn chat_key(peer: &str) -> String {
    if peer.contains('@') {
        peer.to_string()
    } else {
        format!("+{peer}")
    }
}
