//! The media servers: the `media_conn` IQ that tells a client where to upload, and the
//! HTTP side (upload of encrypted blobs, download by direct path) that WhatsApp's CDN
//! plays. A client reaches it through [`SimHttpClient`] in process, or through the
//! control API's `/mms` and `/v` routes when the simulator runs on its own.
//!
//! Like WhatsApp's CDN, the simulator only ever holds ciphertext: the media key travels
//! inside the Signal-encrypted message, and a simulated phone that receives media
//! downloads and decrypts it as a real phone would.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2_11::Digest;
use wacore::download::{DownloadUtils, MediaType};
use wacore::iq::mediaconn::{HostType, MediaConnHostExtended, MediaConnResponseExtended};
use wacore::net::{HttpRequest, HttpResponse};
use wacore::protocol::ProtocolNode;

use super::*;

/// The host name the simulator's media servers answer to.
pub const MEDIA_HOST: &str = "mmg.sim.whatsapp.net";

/// Ciphertext the simulator keeps before refusing uploads (a test network, not a CDN).
const MEDIA_STORE_LIMIT: usize = 512 * 1024 * 1024;

/// One upload as the CDN keeps it.
pub(super) struct Blob {
    pub bytes: bytes::Bytes,
}

/// Where the media servers keep an upload: its path, from its upload token.
pub(super) fn direct_path_for(token: &str) -> String {
    format!("/v/t62.sim/{token}")
}

/// What a phone made of media it received: it downloaded and decrypted it.
#[derive(Clone, Debug, Serialize)]
pub struct MediaFetched {
    /// SHA-256 of the decrypted bytes, hex.
    pub sha256: String,
    pub size: usize,
}

/// A media message's fields needed to fetch it, however the proto carries them.
pub(super) struct MediaRef<'a> {
    pub direct_path: Option<&'a str>,
    pub media_key: Option<&'a [u8]>,
    pub file_sha256: Option<&'a [u8]>,
    pub media_type: MediaType,
}

impl Simulator {
    /// The answer to `<iq xmlns="w:m"><media_conn/></iq>`.
    pub(super) fn media_conn_reply(&self, id: &str) -> Node {
        let host = MediaConnHostExtended {
            upload: true,
            download: true,
            ..MediaConnHostExtended::simple(MEDIA_HOST.to_string(), HostType::Primary)
        };
        let conn = MediaConnResponseExtended::mock(self.media_auth().to_string(), 3600, vec![host]);
        iq_result(id).children([conn.into_node()]).build()
    }

    pub(super) fn media_auth(&self) -> &str {
        &self.inner.media_auth
    }

    /// Serves one HTTP request to the media host: `POST /mms/<type>/<token>?auth=…` stores
    /// an upload, `GET <direct path>` returns it.
    pub fn media_http(&self, method: &str, path_and_query: &str, body: &[u8]) -> HttpResponse {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                kv.split_once('=')
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            })
        };
        let reply = |status: u16, body: serde_json::Value| HttpResponse {
            status_code: status,
            body: body.to_string().into_bytes(),
        };
        match method {
            "POST" if path.starts_with("/mms/") => {
                if param("auth").as_deref() != Some(self.media_auth()) {
                    return reply(401, serde_json::json!({"error": "bad auth"}));
                }
                if param("resume").is_some() {
                    return reply(200, serde_json::json!({}));
                }
                let Some(token) = path.rsplit('/').next().filter(|t| !t.is_empty()) else {
                    return reply(400, serde_json::json!({"error": "no token"}));
                };
                // The token is the ciphertext's SHA-256: WhatsApp refuses a body that
                // does not match it, and so does the simulator.
                let digest = sha2_11::Sha256::digest(body);
                if URL_SAFE_NO_PAD.encode(digest) != token {
                    return reply(400, serde_json::json!({"error": "hash mismatch"}));
                }
                let direct_path = direct_path_for(token);
                if let Some(p) = self.inner.persistence.as_ref()
                    && let Err(e) = p.save_media(token, body)
                {
                    tracing::error!(error = %e, "sim: saving an upload");
                    return reply(507, serde_json::json!({"error": "media store failed"}));
                }
                {
                    let mut st = self.state();
                    if st.media_bytes + body.len() > MEDIA_STORE_LIMIT {
                        return reply(507, serde_json::json!({"error": "media store full"}));
                    }
                    if !st.media.contains_key(&direct_path) {
                        st.media_bytes += body.len();
                        st.media.insert(
                            direct_path.clone(),
                            Blob {
                                bytes: bytes::Bytes::copy_from_slice(body),
                            },
                        );
                    }
                }
                reply(
                    200,
                    serde_json::json!({
                        "url": format!("https://{MEDIA_HOST}{direct_path}"),
                        "direct_path": direct_path,
                    }),
                )
            }
            "GET" => match self.media_blob(path) {
                Some(bytes) => HttpResponse {
                    status_code: 200,
                    body: bytes.to_vec(),
                },
                None => reply(404, serde_json::json!({"error": "no such media"})),
            },
            _ => reply(405, serde_json::json!({"error": "method not allowed"})),
        }
    }

    fn media_blob(&self, direct_path: &str) -> Option<bytes::Bytes> {
        self.state().media.get(direct_path).map(|b| b.bytes.clone())
    }

    /// Encrypts and stores media as a phone's upload would; returns the fields a media
    /// message carries.
    pub(super) fn upload_as_phone(
        &self,
        plaintext: &[u8],
        media_type: MediaType,
    ) -> anyhow::Result<(wacore::upload::EncryptedMedia, String)> {
        let enc = wacore::upload::encrypt_media(plaintext, media_type)?;
        let token = URL_SAFE_NO_PAD.encode(enc.file_enc_sha256);
        let path = format!(
            "{}/{token}?auth={}",
            media_type.upload_path(),
            self.media_auth()
        );
        let res = self.media_http("POST", &path, &enc.data_to_upload);
        if res.status_code != 200 {
            bail!("upload refused: {}", String::from_utf8_lossy(&res.body));
        }
        let v: serde_json::Value = serde_json::from_slice(&res.body)?;
        let direct_path = v["direct_path"].as_str().unwrap_or_default().to_string();
        Ok((enc, direct_path))
    }

    /// What a phone does with media it received: downloads the ciphertext and decrypts it
    /// with the key from the message, checking both hashes.
    pub(super) fn fetch_as_phone(&self, media: &MediaRef<'_>) -> anyhow::Result<MediaFetched> {
        let path = media
            .direct_path
            .context("the message has no direct path")?;
        let key = media.media_key.context("the message has no media key")?;
        let blob = self
            .media_blob(path)
            .with_context(|| format!("nothing was uploaded at {path}"))?;
        let plain = DownloadUtils::verify_and_decrypt(&blob, key, media.media_type)
            .map_err(|e| anyhow!("decrypting: {e}"))?;
        let digest = sha2_11::Sha256::digest(&plain);
        if let Some(expected) = media.file_sha256
            && expected != digest.as_slice()
        {
            bail!("the decrypted bytes do not match the message's file_sha256");
        }
        Ok(MediaFetched {
            sha256: hex_lower(&digest),
            size: plain.len(),
        })
    }

    /// A simulated contact sends media (uploaded to the simulator's CDN, end-to-end
    /// encrypted like any message).
    pub async fn inject_media(
        &self,
        from: &str,
        to: &str,
        file: MediaFile<'_>,
    ) -> anyhow::Result<String> {
        let MediaFile {
            kind,
            bytes,
            mimetype,
            caption,
            file_name,
        } = file;
        let media_type = match kind {
            "image" => MediaType::Image,
            "video" => MediaType::Video,
            "audio" => MediaType::Audio,
            "document" => MediaType::Document,
            other => bail!("not a media kind: {other}"),
        };
        let (enc, direct_path) = self.upload_as_phone(bytes, media_type)?;
        // The fields every media message carries, as a phone fills them after its upload.
        macro_rules! uploaded {
            ($ty:ident { $($field:ident $(: $value:expr)?),* $(,)? }) => {
                buffa::MessageField::some(wa::message::$ty {
                    url: Some(format!("https://{MEDIA_HOST}{direct_path}")),
                    direct_path: Some(direct_path.clone()),
                    media_key: Some(enc.media_key.to_vec()),
                    file_sha256: Some(enc.file_sha256.to_vec()),
                    file_enc_sha256: Some(enc.file_enc_sha256.to_vec()),
                    file_length: Some(bytes.len() as u64),
                    mimetype: Some(mimetype.to_string()),
                    $($field $(: $value)?,)*
                    ..Default::default()
                })
            };
        }
        let caption = caption.map(str::to_string);
        let mut message = wa::Message::default();
        match media_type {
            MediaType::Image => message.image_message = uploaded!(ImageMessage { caption }),
            MediaType::Video => message.video_message = uploaded!(VideoMessage { caption }),
            MediaType::Audio => message.audio_message = uploaded!(AudioMessage {}),
            _ => {
                message.document_message = uploaded!(DocumentMessage {
                    caption,
                    file_name: file_name.map(str::to_string),
                })
            }
        }
        self.inject_message(from, to, message).await
    }
}

/// Media a simulated contact sends.
#[derive(Clone, Copy, Debug)]
pub struct MediaFile<'a> {
    /// `image`, `video`, `audio` or `document`.
    pub kind: &'a str,
    pub bytes: &'a [u8],
    pub mimetype: &'a str,
    pub caption: Option<&'a str>,
    pub file_name: Option<&'a str>,
}

/// Where a message's media is, if it carries any.
pub(super) fn media_ref(m: &wa::Message) -> Option<MediaRef<'_>> {
    macro_rules! from {
        ($field:expr, $media_type:expr) => {
            $field.as_option().map(|x| MediaRef {
                direct_path: x.direct_path.as_deref(),
                media_key: x.media_key.as_deref(),
                file_sha256: x.file_sha256.as_deref(),
                media_type: $media_type,
            })
        };
    }
    from!(m.image_message, MediaType::Image)
        .or_else(|| from!(m.video_message, MediaType::Video))
        .or_else(|| from!(m.audio_message, MediaType::Audio))
        .or_else(|| from!(m.document_message, MediaType::Document))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The whatsapp-rust client's HTTP side in process: requests to the simulator's media
/// host are served by the simulator; anything else fails, as there is no internet.
#[derive(Clone)]
pub struct SimHttpClient {
    sim: Simulator,
}

impl SimHttpClient {
    pub fn new(sim: Simulator) -> Self {
        Self { sim }
    }
}

#[async_trait::async_trait]
impl wacore::net::HttpClient for SimHttpClient {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        let Some(rest) = request
            .url
            .strip_prefix("https://")
            .and_then(|r| r.strip_prefix(MEDIA_HOST))
        else {
            bail!(
                "no HTTP behind the WhatsApp simulator ({} {})",
                request.method,
                request.url
            );
        };
        let body = request.body.unwrap_or_default();
        Ok(self.sim.media_http(&request.method, rest, &body))
    }
}
