//! What a file is, read from its bytes: the allow-list of types per kind of media message.
//! A client's declared type is only a hint; one that contradicts the content is refused.

use wagate_actors::messaging::MediaKind;

use crate::error::{ApiError, ErrorCode};

/// Types WhatsApp shows natively, with the kinds of message that may carry them. Every
/// allowed type may also go as a document.
const ALLOWED: &[(&str, MediaKind)] = &[
    ("image/jpeg", MediaKind::Image),
    ("image/png", MediaKind::Image),
    ("image/webp", MediaKind::Image),
    ("video/mp4", MediaKind::Video),
    ("video/3gpp", MediaKind::Video),
    ("audio/ogg", MediaKind::Audio),
    ("audio/mpeg", MediaKind::Audio),
    ("audio/m4a", MediaKind::Audio),
    ("audio/aac", MediaKind::Audio),
    ("audio/amr", MediaKind::Audio),
    ("image/gif", MediaKind::Document),
    ("application/pdf", MediaKind::Document),
    ("application/zip", MediaKind::Document),
    ("application/msword", MediaKind::Document),
    ("application/vnd.ms-excel", MediaKind::Document),
    ("application/vnd.ms-powerpoint", MediaKind::Document),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        MediaKind::Document,
    ),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        MediaKind::Document,
    ),
    (
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        MediaKind::Document,
    ),
    (
        "application/vnd.oasis.opendocument.text",
        MediaKind::Document,
    ),
    (
        "application/vnd.oasis.opendocument.spreadsheet",
        MediaKind::Document,
    ),
    ("text/plain", MediaKind::Document),
    ("text/csv", MediaKind::Document),
];

/// A file whose type was read from its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sniffed {
    pub mime: String,
    /// The message kind it goes as by default (`image` for a JPEG, …).
    pub kind: MediaKind,
}

impl Sniffed {
    /// Whether a message of `kind` may carry this file.
    pub fn fits(&self, kind: MediaKind) -> bool {
        kind == MediaKind::Document || kind == self.kind
    }
}

fn not_allowed(what: &str) -> ApiError {
    let types: Vec<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    ApiError::Rejected {
        status: actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: ErrorCode::MediaTypeNotAllowed,
        message: format!(
            "{what} is not an allowed media type; allowed: {}",
            types.join(", ")
        ),
    }
}

/// Reads the file's type from its bytes and checks it against the allow-list and against
/// what the client declared (`application/octet-stream` and absent declare nothing).
pub fn sniff(bytes: &[u8], declared: Option<&str>) -> Result<Sniffed, ApiError> {
    let declared = declared
        .map(|d| d.split(';').next().unwrap_or(d).trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty() && d != "application/octet-stream");
    let mime = match infer::get(bytes) {
        Some(t) => t.mime_type().to_string(),
        // Plain text has no signature: accept it only when declared as text and it is text.
        None => match declared.as_deref() {
            Some(d @ ("text/plain" | "text/csv"))
                if std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0) =>
            {
                d.to_string()
            }
            _ => return Err(not_allowed("the file's content")),
        },
    };
    let Some((_, kind)) = ALLOWED.iter().find(|(m, _)| *m == mime) else {
        return Err(not_allowed(&format!("{mime} (read from the content)")));
    };
    if let Some(d) = &declared {
        let family = |m: &str| m.split('/').next().unwrap_or_default().to_string();
        let same = *d == mime
            || family(d) == family(&mime)
            // Office formats are zip files underneath.
            || (mime == "application/zip" && d.starts_with("application/"));
        if !same {
            return Err(ApiError::Rejected {
                status: actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: ErrorCode::MediaTypeMismatch,
                message: format!("declared as {d} but the content is {mime}"),
            });
        }
    }
    Ok(Sniffed { mime, kind: *kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
    const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n";

    #[test]
    fn the_type_comes_from_the_content() {
        let s = sniff(PNG, None).unwrap();
        assert_eq!(s.mime, "image/png");
        assert_eq!(s.kind, MediaKind::Image);
        assert!(s.fits(MediaKind::Image) && s.fits(MediaKind::Document));
        assert!(!s.fits(MediaKind::Video));
        assert_eq!(
            sniff(PDF, Some("application/octet-stream")).unwrap().mime,
            "application/pdf"
        );
    }

    #[test]
    fn a_declared_type_that_contradicts_the_content_is_refused() {
        let e = sniff(PDF, Some("image/png")).unwrap_err();
        assert_eq!(e.code().as_str(), "media_type_mismatch");
        assert!(
            sniff(PNG, Some("image/jpeg")).is_ok(),
            "same family: a harmless mislabel"
        );
    }

    #[test]
    fn unknown_content_and_disallowed_types_are_refused() {
        assert_eq!(
            sniff(b"just bytes", None).unwrap_err().code().as_str(),
            "media_type_not_allowed"
        );
        // An executable is recognised, and refused.
        let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0";
        assert_eq!(
            sniff(elf, None).unwrap_err().code().as_str(),
            "media_type_not_allowed"
        );
        // Text only when declared, and only when it is text.
        assert_eq!(
            sniff(b"a,b\n1,2\n", Some("text/csv")).unwrap().mime,
            "text/csv"
        );
        assert!(sniff(b"a\0b", Some("text/plain")).is_err());
    }
}
