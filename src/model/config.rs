//! Model configuration as data (TOML): towers, stem, parallel branch and the sharing mask.
//!
//! Every point of MS-CLIP's sharing spectrum is a config: vanilla CLIP has an empty mask,
//! MS-CLIP shares attention and FFN in every slot, MS-CLIP-S specializes slot 0 (conv stem for
//! vision, a text-only block for text) and shares slots 1..11 (docs/spec-msclip.md §2, §4).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A weight site of a transformer block that can be shared between the towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedSite {
    /// q/k/v in-projection (`attn.in_proj_weight`, `attn.in_proj_bias`).
    AttnIn,
    /// attention out-projection (`attn.out_proj`).
    AttnOut,
    /// FFN first linear (`mlp.c_fc`).
    Fc1,
    /// FFN second linear (`mlp.c_proj`).
    Fc2,
    /// LayerNorm before attention (`ln_1`).
    Ln1,
    /// LayerNorm before the FFN (`ln_2`).
    Ln2,
}

impl SharedSite {
    /// Every site.
    pub const ALL: [SharedSite; 6] =
        [SharedSite::AttnIn, SharedSite::AttnOut, SharedSite::Fc1, SharedSite::Fc2, SharedSite::Ln1, SharedSite::Ln2];
    /// The site's name in configs and VarStore paths (`attn_in`, …).
    pub fn name(self) -> &'static str {
        match self {
            SharedSite::AttnIn => "attn_in",
            SharedSite::AttnOut => "attn_out",
            SharedSite::Fc1 => "fc1",
            SharedSite::Fc2 => "fc2",
            SharedSite::Ln1 => "ln1",
            SharedSite::Ln2 => "ln2",
        }
    }
}

/// One rule of the sharing mask: these sites are shared in these slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharingRule {
    /// Layer slots the rule applies to.
    pub slots: Vec<usize>,
    /// Sites shared in those slots.
    pub sites: Vec<SharedSite>,
}

/// Vision stem kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StemKind {
    /// ViT patch projection (`visual.conv1`, kernel = stride = patch) before slot 0.
    Patch,
    /// MS-CLIP-S Early Specialization: the residual conv stem (`EarlyconvRes`) *is* slot 0.
    EarlyConv,
}

/// The FFN activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x·σ(1.702x), used by OpenAI CLIP and MS-CLIP.
    QuickGelu,
    /// exact erf GELU (OpenCLIP's default for new models).
    Gelu,
}

/// Early-specialization conv stem (`EarlyconvRes`, `basic_v0` blocks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyConvConfig {
    /// Strides of the residual blocks; channels go width/2^n → width doubling per block.
    pub strides: Vec<i64>,
}

/// Efficient parallel branch (EPB) with lateral adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelBranchConfig {
    /// Stride of each stage (stage 0 is conv3×3+BN+ReLU on the image, the others ConvResBlocks).
    pub stage_strides: Vec<i64>,
    /// The slot whose block each stage's adapter precedes (one adapter per stage).
    pub adapter_slots: Vec<usize>,
    /// Top-to-bottom depth-wise kernel (= stride) of each adapter, mapping stage maps to the grid.
    pub t2b_kernels: Vec<i64>,
    /// BatchNorm eps inside the ConvResBlocks (official: 1e-6).
    #[serde(default = "default_branch_bn_eps")]
    pub bn_eps: f64,
}

fn default_branch_bn_eps() -> f64 {
    1e-6
}

/// The vision tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// Input image side in pixels.
    pub image_size: i64,
    /// Patch size; for the early-conv stem it must equal 2·Π strides.
    pub patch_size: i64,
    /// Residual stream width.
    pub width: i64,
    /// Attention heads (dividing the width).
    pub heads: i64,
    /// Number of layer slots (slot 0 is the stem for `early_conv`).
    pub layers: usize,
    /// Patch projection or the MS-CLIP-S conv stem.
    pub stem: StemKind,
    /// The conv stem's strides (with `stem = "early_conv"`).
    #[serde(default)]
    pub early_conv: Option<EarlyConvConfig>,
    /// MS-CLIP-S's parallel branch, if any.
    #[serde(default)]
    pub parallel_branch: Option<ParallelBranchConfig>,
}

/// The text tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Token vocabulary size (49,408 for CLIP's BPE).
    pub vocab_size: i64,
    /// Context length in tokens (77).
    pub context_length: i64,
    /// Residual stream width.
    pub width: i64,
    /// Attention heads (dividing the width).
    pub heads: i64,
    /// Number of layer slots.
    pub layers: usize,
}

/// Image normalisation constants (recorded in every output's provenance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Per-channel mean of `x/255`.
    pub mean: [f64; 3],
    /// Per-channel standard deviation of `x/255`.
    pub std: [f64; 3],
}

/// A model of the CLIP / MS-CLIP family, as data (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name recorded in outputs (a preset's name for presets).
    pub name: String,
    /// Joint embedding width.
    pub embed_dim: i64,
    /// FFN hidden width / residual width.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: i64,
    /// The FFN activation.
    pub activation: Activation,
    /// LayerNorm eps: 1e-12 in the official MS-CLIP code, 1e-5 in OpenAI CLIP.
    pub ln_eps: f64,
    /// Initial value of the raw `logit_scale` parameter (scale = exp(raw)).
    pub logit_scale_init: f64,
    /// The vision tower.
    pub vision: VisionConfig,
    /// The text tower.
    pub text: TextConfig,
    /// Image normalisation constants.
    pub preprocess: Preprocess,
    /// Which block sites are shared between the towers, in which slots (empty: CLIP).
    #[serde(default)]
    pub sharing: Vec<SharingRule>,
}

fn default_mlp_ratio() -> i64 {
    4
}

/// Largest tower or embedding width accepted.
pub const MAX_WIDTH: i64 = 65_536;
/// Largest number of layer slots per tower.
pub const MAX_LAYERS: usize = 1024;
/// Largest (approximate) parameter count accepted: 2^33 ≈ 8.6 G parameters, 34 GB in fp32.
pub const MAX_PARAMS: i128 = 1 << 33;

/// ImageNet statistics (MS-CLIP evaluation default).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviations (MS-CLIP evaluation default).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// OpenAI CLIP statistics.
pub const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP standard deviations.
pub const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Built-in presets, stored as TOML in `configs/models/`.
pub const PRESETS: &[(&str, &str)] = &[
    ("clip-b32", include_str!("../../configs/models/clip-b32.toml")),
    ("clip-b16", include_str!("../../configs/models/clip-b16.toml")),
    ("msclip-b32", include_str!("../../configs/models/msclip-b32.toml")),
    ("msclip-s-b32", include_str!("../../configs/models/msclip-s-b32.toml")),
    ("msclip-s-b16", include_str!("../../configs/models/msclip-s-b16.toml")),
    ("tiny-clip", include_str!("../../configs/models/tiny-clip.toml")),
    ("tiny-msclip", include_str!("../../configs/models/tiny-msclip.toml")),
    // Unshared before shared: `--model auto` takes the first preset whose keys all match, and a
    // shared model's keys are a subset of its unshared twin's.
    ("tiny-clip-s", include_str!("../../configs/models/tiny-clip-s.toml")),
    ("tiny-msclip-s", include_str!("../../configs/models/tiny-msclip-s.toml")),
    ("tiny-msclip-attn", include_str!("../../configs/models/tiny-msclip-attn.toml")),
    ("tiny-msclip-ln", include_str!("../../configs/models/tiny-msclip-ln.toml")),
];

impl ModelConfig {
    /// A built-in preset by name.
    pub fn preset(name: &str) -> Result<ModelConfig> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            Error::config("model", format!("{name:?}"), format!("unknown preset; known: {}", names.join(", ")))
        })?;
        Self::from_toml_str(text, Path::new(&format!("<preset {name}>")))
    }

    /// Parses and validates a TOML config; errors name the file, line and key.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<ModelConfig> {
        let cfg: ModelConfig = toml::from_str(text).map_err(|e| Error::Parse { path: origin.to_path_buf(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a TOML config file.
    pub fn from_toml_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// The config as TOML (round-trips through [`ModelConfig::from_toml_str`]).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }

    /// Number of grid cells per side (image tokens = grid² + 1).
    pub fn grid(&self) -> i64 {
        self.vision.image_size / self.vision.patch_size
    }

    /// Whether the vision tower has a transformer block at `slot` (slot 0 is the conv stem for ES).
    pub fn vision_has_block(&self, slot: usize) -> bool {
        slot < self.vision.layers && !(slot == 0 && self.vision.stem == StemKind::EarlyConv)
    }

    /// Whether the text tower has a block at `slot`.
    pub fn text_has_block(&self, slot: usize) -> bool {
        slot < self.text.layers
    }

    /// Sites shared at `slot` (the union of all rules naming it).
    pub fn shared_sites(&self, slot: usize) -> BTreeSet<SharedSite> {
        self.sharing.iter().filter(|r| r.slots.contains(&slot)).flat_map(|r| r.sites.iter().copied()).collect()
    }

    /// Whether `site` is shared at `slot`.
    pub fn is_shared(&self, slot: usize, site: SharedSite) -> bool {
        self.sharing.iter().any(|r| r.slots.contains(&slot) && r.sites.contains(&site))
    }

    /// Slots with at least one shared site.
    pub fn shared_slots(&self) -> BTreeSet<usize> {
        self.sharing.iter().filter(|r| !r.sites.is_empty()).flat_map(|r| r.slots.iter().copied()).collect()
    }

    /// Slots where the vision tower has an attention layer, in order.
    pub fn vision_attention_slots(&self) -> Vec<usize> {
        (0..self.vision.layers).filter(|&s| self.vision_has_block(s)).collect()
    }

    /// Slots where the text tower has an attention layer (all of them).
    pub fn text_attention_slots(&self) -> Vec<usize> {
        (0..self.text.layers).collect()
    }

    /// An upper bound on the parameter count (every block counted in both towers, shared or
    /// not), in i128 so no configuration can overflow it; used to refuse configs whose
    /// tensors could not be allocated before anything is allocated.
    pub fn approx_params(&self) -> i128 {
        let (v, t) = (&self.vision, &self.text);
        let block = |w: i64| {
            let (w, h) = (w as i128, w as i128 * self.mlp_ratio.max(0) as i128);
            4 * w * w + 4 * w + 2 * w * h + h + w + 4 * w
        };
        let g = self.grid() as i128;
        let (vw, tw, e) = (v.width as i128, t.width as i128, self.embed_dim as i128);
        let stem = 3 * (v.patch_size as i128).pow(2) * vw + vw * vw;
        let vision = stem + (g * g + 1) * vw + v.layers as i128 * block(v.width) + vw * e + 2 * vw * vw;
        let text = (t.vocab_size as i128 + t.context_length as i128) * tw + t.layers as i128 * block(t.width) + tw * e;
        vision + text
    }

    /// Checks every constraint; the error names the offending key and value.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let positive = |key: &str, x: i64| {
            if x <= 0 {
                Err(Error::config(key, x, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive("embed_dim", self.embed_dim)?;
        positive("mlp_ratio", self.mlp_ratio)?;
        positive("vision.image_size", v.image_size)?;
        positive("vision.patch_size", v.patch_size)?;
        positive("vision.width", v.width)?;
        positive("vision.heads", v.heads)?;
        positive("text.width", t.width)?;
        positive("text.heads", t.heads)?;
        positive("text.vocab_size", t.vocab_size)?;
        positive("text.context_length", t.context_length)?;
        if !(self.ln_eps > 0.0 && self.ln_eps.is_finite()) {
            return Err(Error::config("ln_eps", self.ln_eps, "must be positive and finite"));
        }
        if !self.logit_scale_init.is_finite() {
            return Err(Error::config("logit_scale_init", self.logit_scale_init, "must be finite"));
        }
        for (key, x, max) in [
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("mlp_ratio", self.mlp_ratio, 64),
            ("vision.image_size", v.image_size, 8192),
            ("vision.width", v.width, MAX_WIDTH),
            ("text.width", t.width, MAX_WIDTH),
            ("text.vocab_size", t.vocab_size, 10_000_000),
            ("text.context_length", t.context_length, 65_536),
        ] {
            if x > max {
                return Err(Error::config(key, x, format!("is larger than the supported maximum {max}")));
            }
        }
        for (key, x) in [("vision.layers", v.layers), ("text.layers", t.layers)] {
            if x > MAX_LAYERS {
                return Err(Error::config(key, x, format!("is larger than the supported maximum {MAX_LAYERS}")));
            }
        }
        if v.layers == 0 {
            return Err(Error::config("vision.layers", v.layers, "must be at least 1"));
        }
        if t.layers == 0 {
            return Err(Error::config("text.layers", t.layers, "must be at least 1"));
        }
        if v.width % v.heads != 0 {
            return Err(Error::config("vision.heads", v.heads, format!("vision.width {} is not divisible by it", v.width)));
        }
        if t.width % t.heads != 0 {
            return Err(Error::config("text.heads", t.heads, format!("text.width {} is not divisible by it", t.width)));
        }
        if v.image_size % v.patch_size != 0 {
            return Err(Error::config("vision.image_size", v.image_size, format!("not divisible by vision.patch_size {}", v.patch_size)));
        }
        if self.grid() > 1024 {
            return Err(Error::config(
                "vision.patch_size",
                v.patch_size,
                format!("gives a {0}×{0} token grid; at most 1024×1024 is supported", self.grid()),
            ));
        }
        for (i, s) in self.preprocess.std.iter().enumerate() {
            if !(*s > 0.0 && s.is_finite()) {
                return Err(Error::config(format!("preprocess.std[{i}]"), s, "must be positive and finite"));
            }
        }
        for (i, m) in self.preprocess.mean.iter().enumerate() {
            if !m.is_finite() {
                return Err(Error::config(format!("preprocess.mean[{i}]"), m, "must be finite"));
            }
        }
        let params = self.approx_params();
        if params > MAX_PARAMS {
            return Err(Error::config(
                "model",
                &self.name,
                format!(
                    "would hold about {:.3e} parameters ({:.0} GB in fp32); at most {MAX_PARAMS:.0e} are supported",
                    params as f64,
                    params as f64 * 4e-9
                ),
            ));
        }
        match v.stem {
            StemKind::Patch => {
                if v.early_conv.is_some() {
                    return Err(Error::config("vision.early_conv", "{…}", "only allowed with stem = \"early_conv\""));
                }
            }
            StemKind::EarlyConv => {
                let ec = v
                    .early_conv
                    .as_ref()
                    .ok_or_else(|| Error::config("vision.stem", "\"early_conv\"", "needs a [vision.early_conv] table"))?;
                if ec.strides.is_empty() || ec.strides.len() > 16 || ec.strides.iter().any(|&s| !(1..=64).contains(&s)) {
                    return Err(Error::config(
                        "vision.early_conv.strides",
                        format!("{:?}", ec.strides),
                        "need 1 to 16 strides, each in 1..=64",
                    ));
                }
                let n = ec.strides.len() as u32;
                if v.width % (1 << n) != 0 || v.width >> n < 1 {
                    return Err(Error::config("vision.width", v.width, format!("must be divisible by 2^{n} for the conv stem")));
                }
                let total: i64 = 2 * ec.strides.iter().product::<i64>();
                if total != v.patch_size {
                    return Err(Error::config(
                        "vision.early_conv.strides",
                        format!("{:?}", ec.strides),
                        format!("2·Π strides = {total} must equal vision.patch_size {}", v.patch_size),
                    ));
                }
                if v.layers < 2 {
                    return Err(Error::config("vision.layers", v.layers, "early_conv uses slot 0; need ≥ 2 slots"));
                }
            }
        }
        if let Some(pb) = &v.parallel_branch {
            let n = pb.stage_strides.len();
            if n == 0 || n > 5 {
                return Err(Error::config("vision.parallel_branch.stage_strides", n, "need 1 to 5 stages"));
            }
            if pb.adapter_slots.len() != n || pb.t2b_kernels.len() != n {
                return Err(Error::config(
                    "vision.parallel_branch.adapter_slots",
                    format!("{:?}", pb.adapter_slots),
                    format!("need one adapter slot and one t2b kernel per stage ({n})"),
                ));
            }
            if v.width % 16 != 0 {
                return Err(Error::config("vision.width", v.width, "parallel branch needs width divisible by 16"));
            }
            let mut res = v.image_size;
            for (k, (&s, &kern)) in pb.stage_strides.iter().zip(&pb.t2b_kernels).enumerate() {
                if s <= 0 || kern <= 0 {
                    return Err(Error::config("vision.parallel_branch", format!("stage {k}"), "strides and kernels must be positive"));
                }
                res = (res + 2 - 3) / s + 1; // conv3×3, pad 1
                if res % kern != 0 || res / kern != self.grid() {
                    return Err(Error::config(
                        format!("vision.parallel_branch.t2b_kernels[{k}]"),
                        kern,
                        format!("stage {k} map is {res}×{res}; {res}/{kern} must equal the grid {}", self.grid()),
                    ));
                }
            }
            let mut prev = 0;
            for (k, &slot) in pb.adapter_slots.iter().enumerate() {
                if slot == 0 || !self.vision_has_block(slot) || (k > 0 && slot <= prev) {
                    return Err(Error::config(
                        format!("vision.parallel_branch.adapter_slots[{k}]"),
                        slot,
                        "must be increasing vision block slots ≥ 1",
                    ));
                }
                prev = slot;
            }
        }
        for (r, rule) in self.sharing.iter().enumerate() {
            for &slot in &rule.slots {
                if !self.vision_has_block(slot) || !self.text_has_block(slot) {
                    return Err(Error::config(
                        format!("sharing[{r}].slots"),
                        slot,
                        "both towers need a transformer block in a shared slot (slot 0 is the conv stem with early_conv)",
                    ));
                }
            }
            if !rule.sites.is_empty() && !rule.slots.is_empty() {
                if v.width != t.width {
                    return Err(Error::config(
                        "text.width",
                        t.width,
                        format!("shared sites need equal widths (vision.width = {})", v.width),
                    ));
                }
                let attn = rule.sites.iter().any(|s| matches!(s, SharedSite::AttnIn | SharedSite::AttnOut));
                if attn && v.heads != t.heads {
                    return Err(Error::config(
                        "text.heads",
                        t.heads,
                        format!("shared attention needs equal heads (vision.heads = {})", v.heads),
                    ));
                }
            }
        }
        Ok(())
    }
}
