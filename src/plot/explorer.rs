//! The interactive explorer page (`msclip-analyze explore`): rendering only. The maps arrive
//! computed (`commands::explore`); this module quantises them, encodes them and fills the
//! hand-written template `explorer.html` (embedded with `include_str!`, no build step).
//!
//! Quantisation (the page's size budget: a B/32 pair must fit in 5 MB): every map row — one
//! query's attention over the keys, one token's relevancy over the patches — is stored as u8
//! `q = round(255 · max(v, 0) / m)` with `m = max(v)` of that row, and its scale `s = m / 255`;
//! the page draws `q · s`, so each value is off by at most `s / 2 = m / 510`. All maps drawn
//! are non-negative (post-softmax attention, rollout, Chefer relevancy); negative inputs are
//! clamped to 0 and counted ([`Quantized::clamped`]).

use serde::Serialize;

/// The page template: HTML, CSS and JavaScript in one file; `/*__MSCLIP_DATA__*/` is replaced
/// by the page's data as JSON.
pub const TEMPLATE: &str = include_str!("explorer.html");
const DATA_MARK: &str = "/*__MSCLIP_DATA__*/";

/// Rows of non-negative values as u8 with one scale per row.
#[derive(Debug, Clone, Serialize)]
pub struct Quantized {
    /// The bytes, row-major, base64 (RFC 4648, padded).
    pub q: String,
    /// Per row: the value of one quantisation step (`max / 255`; 0 for an all-zero row).
    pub scales: Vec<f32>,
    /// Row length.
    pub row: usize,
    /// How many negative inputs were clamped to 0.
    #[serde(skip)]
    pub clamped: usize,
}

impl Quantized {
    /// Quantises `values` in rows of `row` values (`values.len()` must be a multiple of `row`).
    pub fn rows(values: &[f32], row: usize) -> Quantized {
        assert!(row > 0 && values.len().is_multiple_of(row), "quantise: {} values are not rows of {row}", values.len());
        let mut bytes = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(values.len() / row);
        let mut clamped = 0;
        for r in values.chunks(row) {
            let m = r.iter().copied().filter(|v| v.is_finite()).fold(0.0f32, f32::max);
            let s = m / 255.0;
            scales.push(s);
            for &v in r {
                if v < 0.0 {
                    clamped += 1;
                }
                let q = if s > 0.0 && v.is_finite() { (v.max(0.0) / s).round().clamp(0.0, 255.0) as u8 } else { 0 };
                bytes.push(q);
            }
        }
        Quantized { q: base64(&bytes), scales, row, clamped }
    }

    /// The values the page draws (`q · scale`), for tests and the size report.
    pub fn dequantize(&self) -> Vec<f32> {
        let bytes = unbase64(&self.q).expect("our own base64");
        bytes.chunks(self.row).zip(&self.scales).flat_map(|(r, &s)| r.iter().map(move |&q| q as f32 * s)).collect()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what the browser's `atob` reads).
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= c.len() { B64[(n >> shift & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// Decodes [`base64`]; `None` on a character outside the alphabet or a bad length.
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&b| b == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for c in s.chunks(4) {
        let pad = c.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &b in &c[..4 - pad] {
            n = n << 6 | val(b)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    Some(out)
}

/// The static figures' sequential colour map ([`super::heat`], viridis) as 256 RGB triples,
/// so the page and the PNGs colour a value alike.
pub fn colormap() -> Vec<[u8; 3]> {
    (0..256).map(|i| super::heat(i as f64 / 255.0)).map(|c| [c.0, c.1, c.2]).collect()
}

/// JSON that is safe inside a `<script>` element: `<`, `>` and `&` (only ever inside JSON
/// strings) become `\u003c`, `\u003e`, `\u0026`, so no caption can close the element.
pub fn script_safe_json(value: &impl Serialize) -> String {
    let json = serde_json::to_string(value).expect("page data serialises");
    json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

/// The page: the template with `data` embedded.
pub fn render_page(data: &impl Serialize) -> String {
    let json = script_safe_json(data);
    debug_assert!(TEMPLATE.contains(DATA_MARK));
    TEMPLATE.replacen(DATA_MARK, &json, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors_and_round_trips() {
        // RFC 4648 §10.
        for (plain, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(plain.as_bytes()), enc);
            assert_eq!(unbase64(enc).unwrap(), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unbase64(&base64(&all)).unwrap(), all);
        assert!(unbase64("Zm9").is_none() && unbase64("Zm9*").is_none());
    }

    #[test]
    fn quantisation_error_is_at_most_half_a_step_of_each_row() {
        let v = [0.0f32, 0.25, 0.5, 1.0, 0.001, 0.002, 0.003, 0.004, 0.0, 0.0, 0.0, 0.0];
        let q = Quantized::rows(&v, 4);
        assert_eq!(q.scales.len(), 3);
        assert!((q.scales[0] - 1.0 / 255.0).abs() < 1e-9 && q.scales[2] == 0.0);
        let d = q.dequantize();
        for (i, (a, b)) in v.iter().zip(&d).enumerate() {
            let step = q.scales[i / 4];
            assert!((a - b).abs() <= step / 2.0 + 1e-9, "value {i}: {a} vs {b}");
        }
        // The row maximum is exact up to rounding of the scale.
        assert!((d[3] - 1.0).abs() < 1e-6 && (d[7] - 0.004).abs() < 1e-8);
        let neg = Quantized::rows(&[-1.0, 2.0], 2);
        assert_eq!((neg.clamped, neg.dequantize()[0]), (1, 0.0));
    }

    #[test]
    fn page_data_cannot_close_the_script_element() {
        let page = render_page(&serde_json::json!({ "caption": "</script><script>alert(1)</script> & <!--" }));
        assert_eq!(page.matches("</script>").count(), TEMPLATE.matches("</script>").count());
        assert!(page.contains("\\u003c/script\\u003e"));
        assert!(!page.contains(DATA_MARK));
        assert_eq!(colormap().len(), 256);
    }
}
