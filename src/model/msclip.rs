//! `MsClip`: the two towers, the shared sites and the contrastive head.

use serde::Serialize;
use tch::{nn, Device, Tensor};

use super::block::SiteRegistry;
use super::capture::{ActivationCache, Capture};
use super::config::ModelConfig;
use super::towers::{TextTower, VisionTower};
use crate::error::Result;
use crate::tensor::l2_normalize;

/// The fixed zero-shot logit scale of the official evaluation (`tools/zero_shot.py`).
pub const ZERO_SHOT_SCALE: f64 = 100.0;

/// A CLIP / MS-CLIP / MS-CLIP-S model (which one is decided by its [`ModelConfig`]).
///
/// VarStore layout: `shared.blocks.{slot}.{site}.*` (one tensor used by both towers),
/// `visual.*`, `text.*`, `logit_scale`.
#[derive(Debug)]
pub struct MsClip {
    /// The model's config.
    pub config: ModelConfig,
    /// The image tower.
    pub vision: VisionTower,
    /// The text tower.
    pub text: TextTower,
    /// Raw temperature parameter; the scale is `exp(logit_scale)`.
    pub logit_scale: Tensor,
}

/// Unique trainable parameter counts (BN running statistics are buffers, not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCount {
    /// All unique parameters (shared tensors once), including `logit_scale`.
    pub total: i64,
    /// Parameters used by both towers.
    pub shared: i64,
    /// Parameters of the vision tower alone.
    pub vision_only: i64,
    /// Parameters of the text tower alone.
    pub text_only: i64,
}

/// Output of [`MsClip::forward`].
pub struct ForwardOutput {
    /// L2-normalised image embeddings `[B, E]`.
    pub image: Tensor,
    /// L2-normalised text embeddings `[B, E]`.
    pub text: Tensor,
    /// `exp(logit_scale) · image · textᵀ` `[B_img, B_txt]`.
    pub logits_per_image: Tensor,
    /// What the capture spec recorded.
    pub cache: ActivationCache,
}

impl MsClip {
    /// Builds the model's parameters under `root` (normally `vs.root()`).
    pub fn new(root: &nn::Path, config: &ModelConfig) -> MsClip {
        let mut reg = SiteRegistry::new(root / "shared");
        let vision = VisionTower::new(&(root / "visual"), config, &mut reg);
        let text = TextTower::new(&(root / "text"), config, &mut reg);
        let logit_scale = root.var("logit_scale", &[], nn::Init::Const(config.logit_scale_init));
        MsClip { config: config.clone(), vision, text, logit_scale }
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.logit_scale.device()
    }

    fn check_device(&self, what: &str, t: &Tensor) -> Result<()> {
        if t.device() != self.device() {
            return Err(crate::Error::Invalid(format!("{what} tensor is on {:?} but the model is on {:?}", t.device(), self.device())));
        }
        Ok(())
    }

    /// A fresh VarStore on `device` with the model initialised from `seed`.
    pub fn build(config: &ModelConfig, device: Device, seed: i64) -> (nn::VarStore, MsClip) {
        let vs = nn::VarStore::new(device);
        let model = super::init::with_seed(seed as u64, || MsClip::new(&vs.root(), config));
        (vs, model)
    }

    /// A VarStore with the model's variables but no random initialisation (zeros), for
    /// loading weights into.
    pub fn build_for_loading(config: &ModelConfig, device: Device) -> (nn::VarStore, MsClip) {
        super::init::without_init(|| MsClip::build(config, device, 0))
    }

    /// Image embeddings `[B, E]` (L2-normalised), recording what `capture` asks for.
    /// A libtorch failure (out of memory on a user-sized batch, …) is an error, not a panic
    /// ([`crate::error::torch_guard`]).
    pub fn encode_image_with(&self, images: &Tensor, capture: &Capture, cache: &mut ActivationCache, train: bool) -> Result<Tensor> {
        self.vision.check_input(images)?;
        self.check_device("image", images)?;
        capture.check_hooks(&self.config)?;
        crate::error::torch_guard(|| {
            let pooled = self.vision.forward_features(images, capture, cache, train)?;
            let projected = self.vision.project(&pooled);
            check_outputs("vision", &projected)?;
            Ok(l2_normalize(&projected))
        })
    }

    /// Text embeddings `[B, E]` (L2-normalised), recording what `capture` asks for.
    /// Failures as [`MsClip::encode_image_with`].
    pub fn encode_text_with(&self, tokens: &Tensor, capture: &Capture, cache: &mut ActivationCache) -> Result<Tensor> {
        self.text.check_input(tokens)?;
        self.check_device("token", tokens)?;
        capture.check_hooks(&self.config)?;
        crate::error::torch_guard(|| {
            let pooled = self.text.forward_features(tokens, capture, cache)?;
            let projected = self.text.project(&pooled);
            check_outputs("text", &projected)?;
            Ok(l2_normalize(&projected))
        })
    }

    /// Normalised image embeddings, eval mode, nothing captured.
    pub fn encode_image(&self, images: &Tensor) -> Result<Tensor> {
        self.encode_image_with(images, &Capture::none(), &mut ActivationCache::new(), false)
    }

    /// Normalised text embeddings, nothing captured.
    pub fn encode_text(&self, tokens: &Tensor) -> Result<Tensor> {
        self.encode_text_with(tokens, &Capture::none(), &mut ActivationCache::new())
    }

    /// Both towers and the learned-scale logits; `train` puts BatchNorms in training mode.
    pub fn forward(&self, images: &Tensor, tokens: &Tensor, capture: &Capture, train: bool) -> Result<ForwardOutput> {
        let mut cache = ActivationCache::new();
        let image = self.encode_image_with(images, capture, &mut cache, train)?;
        let text = self.encode_text_with(tokens, capture, &mut cache)?;
        let logits_per_image = self.logits(&image, &text);
        Ok(ForwardOutput { image, text, logits_per_image, cache })
    }

    /// `exp(logit_scale) · image · textᵀ` on normalised embeddings.
    pub fn logits(&self, image: &Tensor, text: &Tensor) -> Tensor {
        image.matmul(&text.tr()) * self.logit_scale.exp()
    }

    /// Zero-shot logits `100 · image · W` with `W: [E, C]` the class embeddings (columns
    /// normalised), the official evaluation's fixed scale.
    pub fn zero_shot_logits(image: &Tensor, classifier: &Tensor) -> Tensor {
        image.matmul(classifier) * ZERO_SHOT_SCALE
    }

    /// Counts unique trainable parameters by owner (`shared.*`, `visual.*`, `text.*`).
    pub fn param_count(vs: &nn::VarStore) -> ParamCount {
        let mut c = ParamCount { total: 0, shared: 0, vision_only: 0, text_only: 0 };
        for (name, t) in vs.variables() {
            if !t.requires_grad() {
                continue; // BN running statistics
            }
            let n = t.numel() as i64;
            c.total += n;
            match name.split('.').next() {
                Some("shared") => c.shared += n,
                Some("visual") => c.vision_only += n,
                Some("text") => c.text_only += n,
                _ => {}
            }
        }
        c
    }
}

/// Every embedding a tower produces is checked once, where it is produced: values that are
/// not finite (finite weights whose outputs overflow) and exactly-zero embeddings (a
/// degenerate model, e.g. all-zero weights, for which cosine similarity is undefined) are
/// errors naming the tower, never numbers downstream.
pub fn check_outputs(tower: &str, projected: &Tensor) -> Result<()> {
    if projected.numel() == 0 {
        return Ok(());
    }
    let p = projected.detach();
    if p.isfinite().all().int64_value(&[]) == 0 {
        return Err(crate::Error::Numeric(format!(
            "{tower} tower: outputs are not finite (the embedding after the projection holds NaN or ±inf; the weights are finite but their outputs overflow)"
        )));
    }
    let zero_rows = p.abs().amax(&[-1i64][..], false).eq(0.0).any().int64_value(&[]);
    if zero_rows != 0 {
        return Err(crate::Error::Numeric(format!(
            "{tower} tower: degenerate model: an embedding is exactly zero (all-zero weights?), so similarities and every metric built on them are undefined"
        )));
    }
    Ok(())
}
