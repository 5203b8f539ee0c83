//! Text clean-up before BPE: `basic_clean` and `whitespace_clean` of OpenAI's tokenizer.
//!
//! `basic_clean(t) = html.unescape(html.unescape(ftfy.fix_text(t))).strip()`. We implement the
//! ftfy fixes that change ASCII/Latin captions (HTML entities when no `<` is present, terminal
//! escapes, UTF-8-as-cp1252/latin-1 mojibake, C1 controls, Latin ligatures, full-width
//! characters, curly quotes, line breaks, control characters, NFC) and Python's exact
//! `html.unescape` algorithm.

use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

#[path = "entities.rs"]
mod entities;

/// cp1252 bytes 0x80..=0x9F (undefined ones map to the C1 control of the same value).
const CP1252_HIGH: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–',
    '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

fn cp1252_encode(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 0x80 || (0xa0..=0xff).contains(&u) {
        return Some(u as u8);
    }
    CP1252_HIGH.iter().position(|&x| x == c).map(|i| 0x80 + i as u8)
}

/// Python's `html.unescape` (HTML5 rules: longest-prefix named references, numeric fix-ups).
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)").expect("a constant regex"));
    re.replace_all(s, |c: &regex::Captures| replace_charref(&c[1])).into_owned()
}

fn lookup(name: &str) -> Option<&'static str> {
    entities::NAMED.binary_search_by(|(k, _)| (*k).cmp(name)).ok().map(|i| entities::NAMED[i].1)
}

fn replace_charref(s: &str) -> String {
    if let Some(num) = s.strip_prefix('#') {
        let digits = num.trim_end_matches(';');
        let value =
            if let Some(hex) = digits.strip_prefix(['x', 'X']) { u64::from_str_radix(hex, 16).ok() } else { digits.parse::<u64>().ok() };
        let n = value.unwrap_or(u64::MAX);
        if n <= u32::MAX as u64 {
            if let Some((_, r)) = entities::INVALID_CHARREFS.iter().find(|(k, _)| *k as u64 == n) {
                return r.to_string();
            }
        }
        if (0xD800..=0xDFFF).contains(&n) || n > 0x10FFFF {
            return "\u{FFFD}".into();
        }
        if entities::INVALID_CODEPOINTS.contains(&(n as u32)) {
            return String::new();
        }
        return char::from_u32(n as u32).map(String::from).unwrap_or_else(|| "\u{FFFD}".into());
    }
    if let Some(r) = lookup(s) {
        return r.to_string();
    }
    // Longest prefix that is a known name (only legacy names match without ';').
    let idx: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    for x in (2..idx.len()).rev() {
        if let Some(r) = lookup(&s[..idx[x]]) {
            return format!("{r}{}", &s[idx[x]..]);
        }
    }
    format!("&{s}")
}

/// ftfy's `unescape_html`: only complete `&...;` references, and only when no `<` is present
/// (ftfy's "auto" mode treats text with `<` as HTML it should not touch).
fn ftfy_unescape(s: &str) -> String {
    if s.contains('<') || !s.contains('&') {
        return s.to_string();
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("a constant regex"));
    re.replace_all(s, |c: &regex::Captures| {
        let t = &c[0];
        let u = html_unescape(t);
        if u.contains(';') {
            t.to_string()
        } else {
            u
        }
    })
    .into_owned()
}

/// Repairs UTF-8 text that was decoded as cp1252/latin-1 ("cafÃ©" → "café"): re-encode the
/// whole string as cp1252 and accept the result only if it is valid UTF-8 that contains
/// non-ASCII characters. Text that is not pure single-byte-encodable is left alone.
fn fix_mojibake(s: &str) -> String {
    if s.is_ascii() || !s.chars().any(|c| matches!(c, 'Ã' | 'Â' | 'â' | 'Å' | 'Ä' | 'Ð' | 'Ñ' | 'Ø' | 'Ù' | 'à' | 'á')) {
        return s.to_string();
    }
    let bytes: Option<Vec<u8>> = s.chars().map(cp1252_encode).collect();
    match bytes.and_then(|b| String::from_utf8(b).ok()) {
        Some(fixed) if fixed != s && !fixed.is_ascii() => fixed,
        _ => s.to_string(),
    }
}

fn fix_char(c: char, out: &mut String) {
    let u = c as u32;
    match c {
        // fix_c1_controls: C1 controls are cp1252 bytes in disguise.
        '\u{80}'..='\u{9f}' => out.push(CP1252_HIGH[(u - 0x80) as usize]),
        // fix_latin_ligatures
        'ﬀ' => out.push_str("ff"),
        'ﬁ' => out.push_str("fi"),
        'ﬂ' => out.push_str("fl"),
        'ﬃ' => out.push_str("ffi"),
        'ﬄ' => out.push_str("ffl"),
        'ﬅ' | 'ﬆ' => out.push_str("st"),
        'Ĳ' => out.push_str("IJ"),
        'ĳ' => out.push_str("ij"),
        // fix_character_width: full-width ASCII and the ideographic space.
        '\u{3000}' => out.push(' '),
        '\u{ff01}'..='\u{ff5e}' => out.push(char::from_u32(u - 0xfee0).expect("fullwidth ASCII maps to ASCII")),
        '\u{ff5f}'..='\u{ffef}' => out.extend(c.to_string().nfkc()),
        // uncurl_quotes
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => out.push('\''),
        '\u{201c}'..='\u{201f}' => out.push('"'),
        // fix_line_breaks
        '\r' | '\u{2028}' | '\u{2029}' => out.push('\n'),
        // remove_control_chars (ftfy's CONTROL_CHARS)
        '\u{0}'..='\u{8}'
        | '\u{b}'
        | '\u{e}'..='\u{1f}'
        | '\u{7f}'
        | '\u{206a}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffc}'
        | '\u{e0000}'..='\u{e007f}' => {}
        _ => out.push(c),
    }
}

/// The subset of `ftfy.fix_text` (default config) that matters for captions.
pub fn fix_text(s: &str) -> String {
    static TERM: OnceLock<Regex> = OnceLock::new();
    let term = TERM.get_or_init(|| Regex::new(r"\x1b\[[0-9;]*[a-zA-Z]").expect("a constant regex"));
    let s = ftfy_unescape(s);
    let s = term.replace_all(&s, "");
    let s = s.replace("\r\n", "\n");
    let s = fix_mojibake(&s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        fix_char(c, &mut out);
    }
    out.nfc().collect()
}

/// `basic_clean`: ftfy, HTML unescape twice, strip.
pub fn basic_clean(text: &str) -> String {
    let t = html_unescape(&html_unescape(&fix_text(text)));
    t.trim().to_string()
}

/// `whitespace_clean`: every run of whitespace becomes one space; strip.
pub fn whitespace_clean(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_matches_python() {
        assert_eq!(html_unescape("Tom &amp; Jerry"), "Tom & Jerry");
        assert_eq!(html_unescape("&amp"), "&");
        assert_eq!(html_unescape("&ampx"), "&x");
        assert_eq!(html_unescape("&#39;&#x41;&#128;"), "'A€");
        assert_eq!(html_unescape("&unknown;"), "&unknown;");
        assert_eq!(html_unescape("&#1;x"), "x");
    }

    #[test]
    fn ftfy_fixes() {
        assert_eq!(fix_text("cafÃ©"), "café");
        assert_eq!(fix_text("“hi” ‘x’"), "\"hi\" 'x'");
        assert_eq!(fix_text("ﬁne ｆｕｌｌ"), "fine full");
        assert_eq!(fix_text("cafe\u{301}"), "café");
    }
}
