//! Numbers in the docs come from the tool: README.md and `docs/*.md` hold no typed result,
//! only blocks that include a generated file,
//!
//! ```text
//! <!-- include: figures/study/sharing-spectrum/comparison.md -->
//! (the file's text, rewritten by `msclip-analyze sync-docs`)
//! <!-- end include -->
//! ```
//!
//! [`sync`] rewrites every block from its file (or a placeholder naming the command that makes
//! it, when the file does not exist yet); [`drift`] lists blocks that differ from their file,
//! and [`unbacked_numbers`] the numbers of a generated Markdown table that appear in no field
//! of the CSV beside it. Both are checked by `tests/docs_numbers.rs`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::write_atomic;

const OPEN: &str = "<!-- include: ";
const CLOSE: &str = "<!-- end include -->";

/// The text a block holds when its file does not exist yet.
pub fn placeholder(path: &str) -> String {
    let how = if path.starts_with("figures/study/") { "make study" } else { "make figures" };
    format!("_(not generated yet: `{how}` writes `{path}`)_\n")
}

/// README.md and every `docs/*.md` under `root` (relative paths, sorted).
pub fn doc_files(root: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = vec![std::path::PathBuf::from("README.md")];
    let dir = root.join("docs");
    if dir.is_dir() {
        let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .filter_map(|p| p.strip_prefix(root).ok().map(|p| p.to_path_buf()))
            .collect();
        v.sort();
        out.extend(v);
    }
    Ok(out)
}

/// A block: the included path, and the byte range of its body in the document.
struct Block {
    path: String,
    body: std::ops::Range<usize>,
    line: usize,
}

fn blocks(text: &str, origin: &Path) -> Result<Vec<Block>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(i) = text[pos..].find(OPEN) {
        let start = pos + i;
        let line = text[..start].lines().count() + 1;
        let bad = |why: &str| Error::Parse { path: origin.to_path_buf(), message: format!("line {line}: {why}") };
        let head_end = text[start..].find("-->").map(|j| start + j).ok_or_else(|| bad("an include marker without `-->`"))?;
        let path = text[start + OPEN.len()..head_end].trim().to_string();
        if path.is_empty() || path.contains("..") || path.starts_with('/') {
            return Err(bad(&format!("include path {path:?} must be a relative path inside the repository")));
        }
        let body_start = text[head_end..].find('\n').map(|j| head_end + j + 1).ok_or_else(|| bad("no line after the include marker"))?;
        let close =
            text[body_start..].find(CLOSE).map(|j| body_start + j).ok_or_else(|| bad(&format!("include of {path} has no `{CLOSE}`")))?;
        out.push(Block { path, body: body_start..close, line });
        pos = close + CLOSE.len();
    }
    Ok(out)
}

fn wanted(root: &Path, path: &str) -> Result<String> {
    let full = root.join(path);
    match std::fs::read_to_string(&full) {
        Ok(t) if t.ends_with('\n') => Ok(t),
        Ok(t) => Ok(t + "\n"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(placeholder(path)),
        Err(e) => Err(Error::io(full, e)),
    }
}

/// Rewrites every include block of `docs` (paths relative to `root`); returns the number of
/// blocks that changed.
pub fn sync(root: &Path, docs: &[&Path]) -> Result<usize> {
    let mut changed = 0;
    for doc in docs {
        let full = root.join(doc);
        let text = std::fs::read_to_string(&full).map_err(|e| Error::io(&full, e))?;
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for b in blocks(&text, &full)? {
            let want = wanted(root, &b.path)?;
            if text[b.body.clone()] != want {
                changed += 1;
            }
            out.push_str(&text[last..b.body.start]);
            out.push_str(&want);
            last = b.body.end;
        }
        out.push_str(&text[last..]);
        if out != text {
            write_atomic(&full, out.as_bytes())?;
        }
    }
    Ok(changed)
}

/// `doc:line: …` for every include block that differs from its file.
pub fn drift(root: &Path, docs: &[&Path]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for doc in docs {
        let full = root.join(doc);
        let text = std::fs::read_to_string(&full).map_err(|e| Error::io(&full, e))?;
        for b in blocks(&text, &full)? {
            if text[b.body.clone()] != wanted(root, &b.path)? {
                out.push(format!(
                    "{}:{}: the block including {} differs from the file (run `msclip-analyze sync-docs`)",
                    doc.display(),
                    b.line,
                    b.path
                ));
            }
        }
    }
    Ok(out)
}

/// The numbers in the body rows of the Markdown tables of `md` that match no numeric field of
/// `csv` at the precision printed (a number printed with d decimals matches a field that
/// rounds to it). Header rows, `< 0.001` and numbers inside words are not checked.
pub fn unbacked_numbers(md: &str, csv: &str) -> Vec<String> {
    let fields: Vec<f64> = csv
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split([',', ' ', '"']).map(str::to_string).collect::<Vec<_>>())
        .filter_map(|f| f.trim().parse::<f64>().ok())
        .collect();
    let mut out = Vec::new();
    let mut in_table = false;
    for line in md.lines() {
        let row = line.trim_start().starts_with('|');
        if !row {
            in_table = false;
            continue;
        }
        let header = !in_table;
        in_table = true;
        if header || line.contains("---") {
            continue;
        }
        for cell in line.split('|') {
            for (value, decimals) in numbers_in(cell) {
                let tol = 0.5 * 10f64.powi(-(decimals as i32)) + 1e-12;
                if !fields.iter().any(|f| (f - value).abs() <= tol) {
                    out.push(format!("{value} in row {:?}", line.trim()));
                }
            }
        }
    }
    out
}

/// Numbers in a table cell with their decimal places; skips `< x`, and digits glued to letters
/// (`R@1`, `B15`, `d0`).
fn numbers_in(cell: &str) -> Vec<(f64, usize)> {
    let b = cell.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        let starts = c.is_ascii_digit() || ((c == '-' || c == '+' || c == '−') && i + 1 < b.len() && (b[i + 1] as char).is_ascii_digit());
        if !starts {
            i += cell[i..].chars().next().map_or(1, |ch| ch.len_utf8());
            continue;
        }
        let glued = i > 0 && ((b[i - 1] as char).is_ascii_alphanumeric() || b[i - 1] == b'@' || b[i - 1] == b'_');
        let mut j = i + 1;
        while j < b.len() && ((b[j] as char).is_ascii_digit() || b[j] == b'.' || b[j] == b'e' || b[j] == b'E') {
            j += 1;
        }
        let text = cell[i..j].trim_end_matches('.');
        let after_glued = j < b.len() && ((b[j] as char).is_ascii_alphabetic() || b[j] == b'_');
        let before = cell[..i].trim_end();
        if !glued && !after_glued && !before.ends_with('<') {
            if let Ok(v) = text.trim_start_matches('+').parse::<f64>() {
                let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
                out.push((v, decimals));
            }
        }
        i = j.max(i + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_must_match_their_csv() {
        let csv = "# provenance: {}\nmodel,mean,lo,hi,p\ntiny-clip,0.48312,0.4551,0.5102,0.0477\n";
        let md = "text 95 %\n\n| model | top-1 [95 %] | p |\n|---|---:|---:|\n| tiny-clip | 0.483 [0.455, 0.510] | 0.048 |\n";
        assert!(unbacked_numbers(md, csv).is_empty(), "{:?}", unbacked_numbers(md, csv));
        let typed = md.replace("0.483", "0.493");
        assert_eq!(unbacked_numbers(&typed, csv).len(), 1);
        assert!(unbacked_numbers("| a | R@1 |\n|---|---|\n| x | < 0.001 |\n", csv).is_empty());
    }

    #[test]
    fn blocks_are_rewritten_and_drift_is_named() {
        let root = std::env::temp_dir().join(format!("msclip-docs-{}", std::process::id()));
        std::fs::create_dir_all(root.join("figures/x")).unwrap();
        std::fs::write(root.join("figures/x/t.md"), "| a |\n|---|\n| 1 |\n").unwrap();
        let doc = "# Doc\n<!-- include: figures/x/t.md -->\nold\n<!-- end include -->\nafter\n<!-- include: figures/study/none.md -->\n<!-- end include -->\n";
        std::fs::write(root.join("README.md"), doc).unwrap();
        let docs = [Path::new("README.md")];
        assert_eq!(drift(&root, &docs).unwrap().len(), 2);
        assert_eq!(sync(&root, &docs).unwrap(), 2);
        let text = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert!(
            text.contains("| 1 |\n<!-- end include -->\nafter") && text.contains("`make study` writes `figures/study/none.md`"),
            "{text}"
        );
        assert!(drift(&root, &docs).unwrap().is_empty());
        std::fs::write(root.join("README.md"), "<!-- include: ../etc/passwd -->\n<!-- end include -->\n").unwrap();
        assert!(sync(&root, &docs).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
