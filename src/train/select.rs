//! Parameter selections: which tensors a run loads from another checkpoint (`init`) and which
//! it keeps fixed (`freeze`), by name glob or by typed site, and the stated mapping between two
//! models' names when they differ.
//!
//! A selector is one of
//! - `vision` | `text`: every tensor that tower uses (its own and the shared ones);
//! - `[TOWER.]SITE[:SLOTS]`: block tensors of the named site, `TOWER` ∈ {`vision`, `text`,
//!   `shared`} (omitted: either tower), `SITE` ∈ {`attn` (= `attn_in` + `attn_out`), `mlp`
//!   (= `fc1` + `fc2`), `ln` (= `ln1` + `ln2`), `block` (all six), `attn_in`, `attn_out`,
//!   `fc1`, `fc2`, `ln1`, `ln2`}, `SLOTS` a list of slots and ranges (`3`, `2-5`, `0,2-4`;
//!   omitted: every slot);
//! - `logit_scale`;
//! - anything else is a glob over the VarStore names (`*` any run of characters, `?` one
//!   character), e.g. `text.*` or `visual.parallel.*`; a selector that matches nothing is an
//!   error.
//!
//! A shared tensor is one tensor: selecting it through either tower selects it for both.
//!
//! An `init` entry is `TARGET` (the same names are read from the source) or `TARGET=SOURCE`,
//! a mapping between typed selectors of two models. The k-th slot of the target's list takes
//! the k-th slot of the source's (equal lengths required), site by site, and tower-level
//! tensors (embeddings, projections, final LayerNorm) map by name within the tower. A target
//! tensor is refused when it has no source or when the choice is ambiguous: a shared target
//! tensor whose source has separate vision and text tensors must name the source tower
//! (`shared.attn:1-11=text.attn:1-11`). A vision-only or text-only target takes the source
//! tensor of its own tower, or the shared one.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::model::SharedSite;

/// A tower, as a selector names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tower {
    /// The image tower (`visual.*` and the shared tensors it uses).
    Vision,
    /// The text tower (`text.*` and the shared tensors it uses).
    Text,
}

/// What a variable is, in tower-relative terms: its tower (None for `logit_scale`), its block
/// slot (None for tower-level tensors) and the rest of its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Role {
    tower: Option<Tower>,
    slot: Option<usize>,
    rest: String,
}

/// The roles of a VarStore name: a shared block tensor has one in each tower.
fn roles(name: &str) -> Vec<Role> {
    let block = |s: &str| -> Option<(usize, String)> {
        let (slot, rest) = s.strip_prefix("blocks.")?.split_once('.')?;
        Some((slot.parse().ok()?, rest.to_string()))
    };
    let role = |tower, rest: &str| match block(rest) {
        Some((slot, rest)) => Role { tower: Some(tower), slot: Some(slot), rest },
        None => Role { tower: Some(tower), slot: None, rest: rest.to_string() },
    };
    if let Some(rest) = name.strip_prefix("shared.") {
        return vec![role(Tower::Vision, rest), role(Tower::Text, rest)];
    }
    if let Some(rest) = name.strip_prefix("visual.") {
        return vec![role(Tower::Vision, rest)];
    }
    if let Some(rest) = name.strip_prefix("text.") {
        return vec![role(Tower::Text, rest)];
    }
    vec![Role { tower: None, slot: None, rest: name.to_string() }]
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq)]
enum Selector {
    /// A whole tower.
    Tower(Tower),
    /// Block sites, optionally of one tower (or only shared tensors) and some slots.
    Sites { scope: Scope, sites: Vec<SharedSite>, slots: Option<Vec<usize>> },
    /// The temperature.
    LogitScale,
    /// A glob over names.
    Glob(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    Any,
    Tower(Tower),
    Shared,
}

fn parse_slots(s: &str, sel: &str) -> Result<Vec<usize>> {
    let bad = |why: &str| Error::config("selection", sel, format!("slots {s:?}: {why}"));
    let mut out = Vec::new();
    for part in s.split(',') {
        let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad("expected numbers like 3, 2-5 or 0,2-4"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(bad("a range must go up (2-5, not 5-2)"));
                }
                if b - a > 4096 {
                    return Err(bad("range too long"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    let mut seen = BTreeSet::new();
    if let Some(d) = out.iter().find(|s| !seen.insert(**s)) {
        return Err(bad(&format!("slot {d} is named twice")));
    }
    Ok(out)
}

fn parse_sites(s: &str) -> Option<Vec<SharedSite>> {
    use SharedSite::*;
    Some(match s {
        "attn" => vec![AttnIn, AttnOut],
        "mlp" => vec![Fc1, Fc2],
        "ln" => vec![Ln1, Ln2],
        "block" => SharedSite::ALL.to_vec(),
        other => vec![SharedSite::ALL.into_iter().find(|x| x.name() == other)?],
    })
}

impl Selector {
    fn parse(s: &str) -> Result<Selector> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::config("selection", "\"\"", "an empty selector"));
        }
        match s {
            "vision" => return Ok(Selector::Tower(Tower::Vision)),
            "text" => return Ok(Selector::Tower(Tower::Text)),
            "logit_scale" => return Ok(Selector::LogitScale),
            _ => {}
        }
        if s.contains(['*', '?']) {
            return Ok(Selector::Glob(s.to_string()));
        }
        let (head, slots) = match s.split_once(':') {
            Some((h, sl)) => (h, Some(parse_slots(sl, s)?)),
            None => (s, None),
        };
        let (scope, site) = match head.split_once('.') {
            Some(("vision", site)) => (Scope::Tower(Tower::Vision), site),
            Some(("text", site)) => (Scope::Tower(Tower::Text), site),
            Some(("shared", site)) => (Scope::Shared, site),
            Some(_) => return Ok(Selector::Glob(s.to_string())),
            None => (Scope::Any, head),
        };
        match parse_sites(site) {
            Some(sites) => Ok(Selector::Sites { scope, sites, slots }),
            None if slots.is_some() => Err(Error::config(
                "selection",
                s,
                "unknown site; expected vision, text, logit_scale, [vision.|text.|shared.]SITE[:SLOTS] with SITE one of attn, mlp, ln, block, attn_in, attn_out, fc1, fc2, ln1, ln2, or a name glob such as text.*",
            )),
            None => Ok(Selector::Glob(s.to_string())),
        }
    }

    /// Whether the selector names a single tower (so a mapping can match by role alone).
    fn tower(&self) -> Option<Tower> {
        match self {
            Selector::Tower(t) | Selector::Sites { scope: Scope::Tower(t), .. } => Some(*t),
            _ => None,
        }
    }

    /// The matching names with their keys: the role of the name that the selector matched
    /// with its slot replaced by the slot's position in an explicit slot list.
    fn resolve<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Vec<(String, Vec<Key>)> {
        let mut out = Vec::new();
        for name in names {
            let keys: Vec<Key> = match self {
                Selector::Glob(g) => {
                    if glob_match(g, name) {
                        vec![Key { tower: None, pos: None, rest: name.clone() }]
                    } else {
                        vec![]
                    }
                }
                Selector::LogitScale => {
                    if name == "logit_scale" {
                        vec![Key { tower: None, pos: None, rest: name.clone() }]
                    } else {
                        vec![]
                    }
                }
                Selector::Tower(t) => roles(name)
                    .into_iter()
                    .filter(|r| r.tower == Some(*t))
                    .map(|r| Key { tower: r.tower, pos: r.slot, rest: r.rest })
                    .collect(),
                Selector::Sites { scope, sites, slots } => roles(name)
                    .into_iter()
                    .filter(|r| match scope {
                        Scope::Any => true,
                        Scope::Tower(t) => r.tower == Some(*t),
                        Scope::Shared => name.starts_with("shared."),
                    })
                    .filter_map(|r| {
                        let slot = r.slot?;
                        let site = r.rest.split('.').next()?;
                        if !sites.iter().any(|s| s.name() == site) {
                            return None;
                        }
                        let pos = match slots {
                            Some(list) => list.iter().position(|s| *s == slot)?,
                            None => slot,
                        };
                        Some(Key { tower: r.tower, pos: Some(pos), rest: r.rest })
                    })
                    .collect(),
            };
            if !keys.is_empty() {
                out.push((name.clone(), keys));
            }
        }
        out
    }

    fn slot_count(&self) -> Option<usize> {
        match self {
            Selector::Sites { slots: Some(s), .. } => Some(s.len()),
            _ => None,
        }
    }
}

/// Where a tensor sits, as two selectors of a mapping compare it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    tower: Option<Tower>,
    pos: Option<usize>,
    rest: String,
}

/// `*` matches any run of characters, `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with one backtrack point (linear in practice, no recursion).
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

/// The names a list of selectors picks out of `names` (for `freeze`, or `init` entries without
/// a mapping). Every selector must match at least one name.
pub fn select(selectors: &[String], names: &BTreeSet<String>, key: &str) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for s in selectors {
        let sel = Selector::parse(s).map_err(|e| rename_key(e, key))?;
        let hit = sel.resolve(names);
        if hit.is_empty() {
            return Err(Error::config(key, s, "matches no tensor of the model"));
        }
        out.extend(hit.into_iter().map(|(n, _)| n));
    }
    Ok(out)
}

/// Parses every selector of a list (mappings allowed when `mappings`), so a typo fails when
/// the config is read rather than after the model is built.
pub fn check_syntax(list: &[String], key: &str, mappings: bool) -> Result<()> {
    for entry in list {
        let sides: Vec<&str> = match entry.split_once('=') {
            Some(_) if !mappings => return Err(Error::config(key, entry, "a mapping TARGET=SOURCE only applies to init.select")),
            Some((t, s)) => vec![t, s],
            None => vec![entry.as_str()],
        };
        for side in sides {
            Selector::parse(side).map_err(|e| rename_key(e, key))?;
        }
    }
    Ok(())
}

fn rename_key(e: Error, key: &str) -> Error {
    match e {
        Error::Config { value, reason, .. } => Error::Config { key: key.to_string(), value, reason },
        other => other,
    }
}

/// `(target name, source name)` for every tensor an `init` selection loads. `target` and
/// `source` map names to shapes; shapes must agree (the error names the tensor and both
/// shapes), every target tensor is loaded at most once, and every selector matches something.
/// An empty selection means every tensor of the target, by name.
pub fn init_pairs(
    entries: &[String],
    target: &BTreeMap<String, Vec<i64>>,
    source: &BTreeMap<String, Vec<i64>>,
    source_origin: &str,
) -> Result<Vec<(String, String)>> {
    let key = "init.select";
    let all = ["*".to_string()];
    let entries = if entries.is_empty() { &all[..] } else { entries };
    let tnames: BTreeSet<String> = target.keys().cloned().collect();
    let mut pairs: BTreeMap<String, String> = BTreeMap::new();
    for entry in entries {
        let found: Vec<(String, String)> = match entry.split_once('=') {
            None => {
                let sel = Selector::parse(entry).map_err(|e| rename_key(e, key))?;
                let names: Vec<String> = sel.resolve(&tnames).into_iter().map(|(n, _)| n).collect();
                if names.is_empty() {
                    return Err(Error::config(key, entry, "matches no tensor of the model being trained"));
                }
                let missing: Vec<&String> = names.iter().filter(|n| !source.contains_key(*n)).collect();
                if !missing.is_empty() {
                    let shown: Vec<&str> = missing.iter().take(8).map(|s| s.as_str()).collect();
                    return Err(Error::config(
                        key,
                        entry,
                        format!(
                            "{source_origin} has no tensor {}{} ({} of {} missing); a checkpoint of another layout needs a mapping TARGET=SOURCE, e.g. shared.attn:1-11=text.attn:1-11",
                            shown.join(", "),
                            if missing.len() > 8 { ", …" } else { "" },
                            missing.len(),
                            names.len()
                        ),
                    ));
                }
                names.into_iter().map(|n| (n.clone(), n)).collect()
            }
            Some((t, s)) => map_entry(entry, t, s, &tnames, source, source_origin)?,
        };
        for (t, s) in found {
            if pairs.contains_key(&t) {
                return Err(Error::config(key, entry, format!("{t} is selected by more than one entry; select each tensor once")));
            }
            pairs.insert(t, s);
        }
    }
    let mut shapes = Vec::new();
    for (t, s) in &pairs {
        if target[t] != source[s] {
            shapes.push(format!("{t} {:?} ← {s} {:?}", target[t], source[s]));
        }
    }
    if !shapes.is_empty() {
        return Err(Error::Invalid(format!(
            "{source_origin}: {} tensor{} of the selection differ in shape (target ← source): {}",
            shapes.len(),
            if shapes.len() == 1 { "" } else { "s" },
            shapes.join("; ")
        )));
    }
    Ok(pairs.into_iter().collect())
}

/// One `TARGET=SOURCE` mapping entry.
fn map_entry(
    entry: &str,
    t: &str,
    s: &str,
    tnames: &BTreeSet<String>,
    source: &BTreeMap<String, Vec<i64>>,
    source_origin: &str,
) -> Result<Vec<(String, String)>> {
    let key = "init.select";
    let (ts, ss) = (Selector::parse(t).map_err(|e| rename_key(e, key))?, Selector::parse(s).map_err(|e| rename_key(e, key))?);
    if matches!(ts, Selector::Glob(_)) || matches!(ss, Selector::Glob(_)) {
        return Err(Error::config(
            key,
            entry,
            "a mapping TARGET=SOURCE takes typed selectors on both sides (text, vision, [TOWER.]SITE[:SLOTS], logit_scale), not name globs",
        ));
    }
    if let (Some(a), Some(b)) = (ts.slot_count(), ss.slot_count()) {
        if a != b {
            return Err(Error::config(
                key,
                entry,
                format!("maps {a} target slots onto {b} source slots; the lists must have equal length"),
            ));
        }
    }
    if ts.slot_count().is_some() != ss.slot_count().is_some() {
        return Err(Error::config(key, entry, "name the slots on both sides of a mapping, or on neither"));
    }
    // Keys compare without the tower when either side names one tower (`shared.attn=text.attn`,
    // `text=text`); otherwise vision maps to vision and text to text.
    let by_role = ts.tower().is_some() || ss.tower().is_some();
    let strip = |k: &Key| Key { tower: if by_role { None } else { k.tower }, pos: k.pos, rest: k.rest.clone() };
    let snames: BTreeSet<String> = source.keys().cloned().collect();
    let mut index: BTreeMap<Key, BTreeMap<Option<Tower>, String>> = BTreeMap::new();
    for (name, keys) in ss.resolve(&snames) {
        for k in keys {
            index.entry(strip(&k)).or_default().insert(k.tower, name.clone());
        }
    }
    let targets = ts.resolve(tnames);
    if targets.is_empty() {
        return Err(Error::config(key, entry, format!("{t} matches no tensor of the model being trained")));
    }
    if index.is_empty() {
        return Err(Error::config(key, entry, format!("{s} matches no tensor of {source_origin}")));
    }
    let mut out = Vec::new();
    for (name, keys) in targets {
        let mut cands: BTreeSet<String> = BTreeSet::new();
        let towers: BTreeSet<Option<Tower>> = keys.iter().map(|k| k.tower).collect();
        for k in &keys {
            let Some(by_tower) = index.get(&strip(k)) else { continue };
            let distinct: BTreeSet<&String> = by_tower.values().collect();
            if distinct.len() == 1 {
                cands.extend(distinct.into_iter().cloned());
            } else if towers.len() == 1 {
                // A one-tower target takes its own tower's tensor.
                if let Some(n) = by_tower.get(&k.tower) {
                    cands.insert(n.clone());
                }
            } else {
                cands.extend(distinct.into_iter().cloned());
            }
        }
        match cands.len() {
            0 => {
                return Err(Error::config(
                    key,
                    entry,
                    format!("{name} has no counterpart in {s} of {source_origin}; narrow the target or name other source slots"),
                ))
            }
            1 => out.push((name, cands.into_iter().next().unwrap_or_default())),
            _ => {
                let list: Vec<String> = cands.into_iter().collect();
                return Err(Error::config(
                    key,
                    entry,
                    format!(
                        "ambiguous: {name} is one tensor shared by both towers, but the source has {}; name the source tower (e.g. =text.{} or =vision.{})",
                        list.join(" and "),
                        site_word(s),
                        site_word(s)
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// `attn:1-11` from `shared.attn:1-11` (for error messages).
fn site_word(s: &str) -> &str {
    s.split_once('.').map_or(s, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of a 3-slot MS-CLIP-S-like model: vision has no block at slot 0 (conv stem),
    /// text has its own slot 0, slots 1–2 share attention and MLP, LayerNorms per tower.
    fn msclip_names() -> BTreeMap<String, Vec<i64>> {
        let mut m = BTreeMap::new();
        for s in 1..3 {
            for site in ["attn_in.weight", "attn_in.bias", "attn_out.weight", "fc1.weight", "fc2.weight"] {
                m.insert(format!("shared.blocks.{s}.{site}"), vec![4, 4]);
            }
            m.insert(format!("visual.blocks.{s}.ln1.weight"), vec![4]);
            m.insert(format!("text.blocks.{s}.ln1.weight"), vec![4]);
        }
        for site in ["attn_in.weight", "attn_in.bias", "attn_out.weight", "fc1.weight", "fc2.weight"] {
            m.insert(format!("text.blocks.0.{site}"), vec![4, 4]);
        }
        m.insert("text.blocks.0.ln1.weight".into(), vec![4]);
        for n in ["visual.stem.conv1.weight", "visual.proj", "text.token_embedding", "text.projection"] {
            m.insert(n.into(), vec![4, 4]);
        }
        m.insert("logit_scale".into(), vec![]);
        m
    }

    /// A 3-slot vanilla CLIP: separate tensors everywhere.
    fn clip_names() -> BTreeMap<String, Vec<i64>> {
        let mut m = BTreeMap::new();
        for s in 0..3 {
            for t in ["visual", "text"] {
                for site in ["attn_in.weight", "attn_in.bias", "attn_out.weight", "fc1.weight", "fc2.weight"] {
                    m.insert(format!("{t}.blocks.{s}.{site}"), vec![4, 4]);
                }
                m.insert(format!("{t}.blocks.{s}.ln1.weight"), vec![4]);
            }
        }
        for n in ["visual.patch_embed.weight", "visual.proj", "text.token_embedding", "text.projection"] {
            m.insert(n.into(), vec![4, 4]);
        }
        m.insert("logit_scale".into(), vec![]);
        m
    }

    fn names(m: &BTreeMap<String, Vec<i64>>) -> BTreeSet<String> {
        m.keys().cloned().collect()
    }

    #[test]
    fn globs() {
        assert!(glob_match("text.*", "text.blocks.0.fc1.weight"));
        assert!(glob_match("*.fc?.weight", "shared.blocks.3.fc2.weight"));
        assert!(!glob_match("*.fc?.weight", "shared.blocks.3.fc2.bias"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b*c", "abxbx"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn typed_selectors_pick_the_named_tensors() {
        let m = msclip_names();
        let n = names(&m);
        let pick = |s: &str| select(&[s.to_string()], &n, "freeze").unwrap();
        assert_eq!(
            pick("shared.attn:2").into_iter().collect::<Vec<_>>(),
            ["shared.blocks.2.attn_in.bias", "shared.blocks.2.attn_in.weight", "shared.blocks.2.attn_out.weight"]
        );
        // The text tower: its own tensors, the shared ones it uses, none of vision's.
        let text = pick("text");
        assert!(text.contains("shared.blocks.1.fc1.weight") && text.contains("text.token_embedding"));
        assert!(!text.iter().any(|t| t.starts_with("visual.")));
        assert_eq!(text.len(), 2 * 5 + 2 + 6 + 2);
        assert_eq!(pick("ln:1-2").len(), 4);
        assert_eq!(pick("vision.ln1").len(), 2);
        assert_eq!(pick("visual.stem.*").len(), 1);
        assert_eq!(pick("logit_scale").len(), 1);
        for bad in ["shared.attn:0", "nosuch.*", "text.attn:7", "shared.bogus", "attn:5-2", "attn:1,1", "attn:x"] {
            assert!(select(&[bad.to_string()], &n, "freeze").is_err(), "{bad}");
        }
    }

    #[test]
    fn mappings_across_layouts() {
        let (ms, clip) = (msclip_names(), clip_names());
        // CLIP's text attention of slots 1–2 into MS-CLIP's shared slots 1–2.
        let p = init_pairs(&["shared.attn:1-2=text.attn:1-2".into()], &ms, &clip, "src").unwrap();
        assert_eq!(p.len(), 6);
        assert!(p.contains(&("shared.blocks.1.attn_in.weight".into(), "text.blocks.1.attn_in.weight".into())));
        // Slot lists map by position: target slots 1–2 from source slots 0–1.
        let p = init_pairs(&["shared.attn:1-2=vision.attn:0-1".into()], &ms, &clip, "src").unwrap();
        assert!(p.contains(&("shared.blocks.1.attn_out.weight".into(), "visual.blocks.0.attn_out.weight".into())));
        // A shared target from separate source tensors without a tower is ambiguous.
        let err = init_pairs(&["shared.attn:1-2=attn:1-2".into()], &ms, &clip, "src").unwrap_err().to_string();
        assert!(err.contains("ambiguous") && err.contains("text.blocks.1.attn_in"), "{err}");
        // Separate targets from a shared source: each takes the one tensor (untying).
        let p = init_pairs(&["attn:1-2=attn:1-2".into()], &clip, &ms, "src").unwrap();
        assert!(p.contains(&("visual.blocks.2.attn_in.weight".into(), "shared.blocks.2.attn_in.weight".into())));
        assert!(p.contains(&("text.blocks.2.attn_in.weight".into(), "shared.blocks.2.attn_in.weight".into())));
        // Same names across different layouts fail with a hint at mappings.
        let err = init_pairs(&["shared.attn:1-2".into()], &ms, &clip, "src").unwrap_err().to_string();
        assert!(err.contains("TARGET=SOURCE"), "{err}");
        // Unequal slot lists, globs in mappings and double selection are refused.
        assert!(init_pairs(&["shared.attn:1-2=text.attn:0-2".into()], &ms, &clip, "src").is_err());
        assert!(init_pairs(&["text.*=text.*".into()], &ms, &clip, "src").is_err());
        assert!(init_pairs(&["shared.attn:1".into(), "attn:1".into()], &ms, &ms, "src").is_err());
        // Everything by name between equal layouts; a shape mismatch names both shapes.
        assert_eq!(init_pairs(&[], &ms, &ms, "src").unwrap().len(), ms.len());
        let mut other = ms.clone();
        other.insert("visual.proj".into(), vec![4, 8]);
        let err = init_pairs(&["vision".into()], &ms, &other, "src").unwrap_err().to_string();
        assert!(err.contains("visual.proj [4, 4] ← visual.proj [4, 8]"), "{err}");
    }
}
