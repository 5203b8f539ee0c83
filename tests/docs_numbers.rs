//! No number typed by hand: every include block of README.md and docs/*.md equals the
//! generated file it names, and every number in a generated table under figures/ appears in
//! the CSV beside it (at the precision printed).

use std::path::{Path, PathBuf};

use msclip::commands::docs::{doc_files, drift, unbacked_numbers};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn include_blocks_match_their_files() {
    let docs = doc_files(root()).unwrap();
    let refs: Vec<&Path> = docs.iter().map(|p| p.as_path()).collect();
    let problems = drift(root(), &refs).unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn md_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            md_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
}

#[test]
fn generated_tables_agree_with_their_csv() {
    let mut files = Vec::new();
    md_files(&root().join("figures"), &mut files);
    let mut checked = 0;
    let mut problems = Vec::new();
    for md in files {
        let csv = md.with_extension("csv");
        if !csv.is_file() {
            continue;
        }
        // Backing: the CSV of the same stem and the other CSVs of the same analysis beside it
        // (`transfer_summary.md` also reports `transfer_settle.csv`).
        let stem = md.file_stem().unwrap().to_string_lossy().to_string();
        let family = stem.split('_').next().unwrap_or(&stem).to_string();
        let mut backing = std::fs::read_to_string(&csv).unwrap();
        let mut siblings: Vec<PathBuf> = std::fs::read_dir(md.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p != &csv
                    && p.extension().is_some_and(|x| x == "csv")
                    && p.file_stem().is_some_and(|s| s.to_string_lossy().starts_with(&format!("{family}_")))
            })
            .collect();
        siblings.sort();
        for sib in siblings {
            backing.push_str(&std::fs::read_to_string(sib).unwrap());
        }
        let bad = unbacked_numbers(&std::fs::read_to_string(&md).unwrap(), &backing);
        problems.extend(bad.into_iter().map(|b| format!("{}: {b}", md.display())));
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} tables found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The README's first result is what the commands print today (scripts/first-result.sh).
#[test]
fn the_first_result_is_current() {
    let text = std::fs::read_to_string(root().join("docs/generated/first-result.md")).unwrap();
    let mut checked = 0;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(cmd) = line.strip_prefix("$ msclip-analyze ") else { continue };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_msclip-analyze"))
            .args(cmd.split_whitespace())
            .current_dir(root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        let got = String::from_utf8_lossy(&out.stdout);
        let want: Vec<&str> = lines[i + 1..].iter().take_while(|l| !l.starts_with("$ ") && !l.starts_with("```")).copied().collect();
        assert_eq!(got.trim_end().lines().collect::<Vec<_>>(), want, "{cmd}: run scripts/first-result.sh");
        checked += 1;
    }
    assert_eq!(checked, 2);
}
