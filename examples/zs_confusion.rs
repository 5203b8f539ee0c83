use msclip::analysis::embedding::prompt_ensemble;
use msclip::data::synthetic_set::{self, TEMPLATES};
use msclip::model::MsClip;
use msclip::tokenizer::Tokenizer;
use tch::Device;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let (_vs, m, _) = msclip::train::load_checkpoint(std::path::Path::new(&dir), Device::Cpu).unwrap();
    let tok = Tokenizer::new(m.config.text.context_length as usize);
    let classes = synthetic_set::zero_shot_classes();
    let prompts: Vec<String> = classes.iter().flat_map(|c| TEMPLATES.iter().map(move |t| t.replace("{}", c))).collect();
    tch::no_grad(|| {
        let pe = m.encode_text(&tok.tokenize_batch(&prompts)).unwrap().view([48, 3, -1]);
        let w = prompt_ensemble(&pe);
        let (im, labels) = synthetic_set::zero_shot_set(0, 300, 64, m.config.preprocess.mean, m.config.preprocess.std);
        let logits = MsClip::zero_shot_logits(&m.encode_image(&im).unwrap(), &w);
        let pred = Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap();
        let (mut ok, mut color_ok, mut shape_ok) = (0, 0, 0);
        for (p, l) in pred.iter().zip(&labels) {
            if p == l { ok += 1; }
            if p / 6 == l / 6 { color_ok += 1; }
            if p % 6 == l % 6 { shape_ok += 1; }
        }
        println!("top1 {} colour {} shape {} of {}", ok, color_ok, shape_ok, labels.len());
        let mut conf = [[0; 6]; 6];
        for (p, l) in pred.iter().zip(&labels) { conf[(l % 6) as usize][(p % 6) as usize] += 1; }
        for (i, row) in conf.iter().enumerate() { println!("{:>9} {:?}", msclip::data::synth::SHAPES[i], row); }
        // text-text similarity of class embeddings
        let s = w.tr().matmul(&w);
        println!("mean off-diag class sim {:.3}", (s.sum(tch::Kind::Float).double_value(&[]) - 48.0) / (48.0 * 47.0));
    });
}
