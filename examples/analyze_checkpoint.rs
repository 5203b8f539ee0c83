//! Load a checkpoint → attention maps → gap metrics → write everything, with the public API
//! only. CI runs it on the fixture checkpoint:
//!
//! ```sh
//! cargo run --release --example analyze_checkpoint -- fixtures/check/ckpt fixtures/check/data/manifest.tsv OUT_DIR
//! ```

use std::path::PathBuf;

use msclip::checkpoint::ModelSource;
use msclip::commands::{attention, gap, DataOptions};
use msclip::data::pairs::PairData;

fn main() -> msclip::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: analyze_checkpoint CHECKPOINT_DIR MANIFEST OUT_DIR");
        std::process::exit(2);
    }
    let (ckpt, manifest, out) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]), PathBuf::from(&args[3]));
    let model = ModelSource::Checkpoint(ckpt).load(0)?;
    println!("{}: {} parameters", model.model.config.name, msclip::model::MsClip::param_count(&model.vs).total);

    // Attention maps, rollout and relevancy for one synthetic scene.
    let att = attention::run(&model, &attention::AttentionOptions { seed: 3, ..Default::default() })?;
    att.write(&out.join("attention"))?;
    for (method, f) in &att.faithfulness {
        println!("{method:<10} deletion AUC {:.4} insertion AUC {:.4}", f.deletion_auc, f.insertion_auc);
    }

    // Gap metrics of the manifest's pairs.
    let g = gap::run(&model, &DataOptions::new(PairData::Manifest(manifest)), gap::DEFAULT_UNIFORMITY_MAX)?;
    g.write(&out.join("gap"))?;
    println!("centroid gap {:.4} | RMG {:.4} | margin {:.4} | n {}", g.gap.centroid_gap, g.gap.rmg, g.gap.margin, g.gap.n);
    println!("wrote {}", out.display());
    Ok(())
}
