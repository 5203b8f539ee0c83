//! The caps on counts that flags and recipes share, defined once. Each is what a 16 GB, 2-core
//! machine finishes with the tiny presets in minutes (costs measured on the project's CI
//! machine kind); exceeding one is an error naming the flag or recipe key (exit 2).

/// Items of analyses that only embed (zero-shot, retrieval, gap, NMI, heads, transfer,
/// probes): memory grows with one embedding per item.
pub const ITEMS: usize = 10_000_000;
/// Forward batch.
pub const BATCH: usize = 65_536;
/// Held-out items of `ablate` (and its reference set). Every head's edit reruns the later
/// layers over all items, and the Spearman and retrieval metrics compare every item with
/// every other: cost grows with items² (1,000 items ≈ 2 s, 4,000 ≈ 12 s on tiny-msclip-s).
pub const ABLATE_ITEMS: usize = 4_096;
/// Held-out items of `decompose` and `shared-heads`: every head's contribution per item is
/// kept ([items, heads, width] per layer; 100,000 items needed 3.3 GB).
pub const DECOMPOSE_ITEMS: usize = 8_192;
/// Minimal pairs of `patch`: one patched run per (slot, position) and per (slot, head).
pub const PATCH_PAIRS: usize = 10_000;
/// Permutations of a permutation test.
pub const PERMUTATIONS: usize = 10_000_000;

/// The cap on a recipe's `synthetic` items for `analysis`.
pub fn recipe_items(analysis: &str) -> usize {
    match analysis {
        "ablation" => ABLATE_ITEMS,
        "decomposition" | "shared-heads" => DECOMPOSE_ITEMS,
        "patching" => PATCH_PAIRS,
        _ => ITEMS,
    }
}
