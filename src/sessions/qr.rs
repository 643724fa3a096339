//! A pairing QR code in the forms clients want: PNG, data URL, terminal blocks, HTML.

use base64::Engine as _;
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, QrCode};

/// Pixels per QR module in the PNG.
const PNG_SCALE: usize = 8;
/// White border, in modules, that scanners need around the code.
const QUIET_ZONE: usize = 4;

pub struct RenderedQr {
    code: QrCode,
}

impl RenderedQr {
    pub fn new(payload: &str) -> anyhow::Result<Self> {
        Ok(Self {
            code: QrCode::new(payload.as_bytes())?,
        })
    }

    /// An 8-bit greyscale PNG with a quiet zone.
    pub fn png(&self) -> anyhow::Result<Vec<u8>> {
        let modules = self.code.width();
        let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
        let colors = self.code.to_colors();
        let mut pixels = vec![255u8; side * side];
        for (i, c) in colors.iter().enumerate() {
            if *c != Color::Dark {
                continue;
            }
            let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
            for dy in 0..PNG_SCALE {
                let row = (my * PNG_SCALE + dy) * side;
                let start = row + mx * PNG_SCALE;
                pixels[start..start + PNG_SCALE].fill(0);
            }
        }
        let mut out = Vec::new();
        {
            let side = u32::try_from(side)?;
            let mut encoder = png::Encoder::new(&mut out, side, side);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header()?;
            writer.write_image_data(&pixels)?;
        }
        Ok(out)
    }

    pub fn data_url(&self) -> anyhow::Result<String> {
        Ok(format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(self.png()?)
        ))
    }

    /// Unicode half blocks, light on dark so it scans from a dark terminal.
    pub fn terminal(&self) -> String {
        self.code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build()
    }
}

/// The QR page's CSP: no scripts, its own inline style, and images only from `data:` URLs
/// (the QR itself is one). The API's CSP (`default-src 'none'`) would block the image.
pub const PAGE_CSP: &str = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A page showing the QR that reloads itself, so it always shows the current code (and the
/// status once the session is linked).
pub fn html_page(title: &str, body: &str, refresh_secs: u32) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{refresh_secs}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;text-align:center;margin-top:3em}}\
         img{{width:320px;height:320px;image-rendering:pixelated}}</style></head>\
         <body>{body}</body></html>",
        title = escape(title),
    )
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_png_a_data_url_and_blocks() {
        let qr = RenderedQr::new("2@abc,def,ghi,1").expect("encodes");
        let png = qr.png().expect("png");
        assert_eq!(&png[1..4], b"PNG");
        assert!(
            qr.data_url()
                .expect("url")
                .starts_with("data:image/png;base64,iVBOR")
        );
        let t = qr.terminal();
        assert!(t.contains('█') || t.contains('▀') || t.contains('▄'));
        assert!(html_page("<x>", "b", 5).contains("&lt;x&gt;"));
    }
}
