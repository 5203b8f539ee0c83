//! CLIP byte-level BPE tokenizer, a port of OpenAI's `clip/simple_tokenizer.py`.
//!
//! Pipeline (as `SimpleTokenizer.encode` + `clip.tokenize(truncate=True)`):
//! `basic_clean` (ftfy-style fix-ups, HTML unescape twice, strip) → whitespace collapse →
//! lowercase → the CLIP regex → byte-to-unicode mapping → BPE merges with `</w>` word ends →
//! ids; then `[SOT] + ids + [EOT]`, truncated to the context with EOT forced into the last
//! slot (OpenCLIP / `truncate=True` behaviour) and padded with 0.
//!
//! The merges file is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT), taken from the PyPI
//! `open_clip_torch` wheel and embedded at compile time (see `assets/NOTICE`).

mod clean;

pub use clean::{basic_clean, whitespace_clean};

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Mutex, OnceLock};

use regex::Regex;

/// Id of `<|startoftext|>`.
pub const SOT: i64 = 49406;
/// Id of `<|endoftext|>`; text towers pool at its first occurrence.
pub const EOT: i64 = 49407;
/// Padding id.
pub const PAD: i64 = 0;
/// Vocabulary size of the CLIP BPE: 256 bytes ×2 (with `</w>`) + 48,894 merges + 2 specials.
pub const VOCAB_SIZE: usize = 49408;
/// Default context length of CLIP text towers.
pub const CONTEXT_LENGTH: usize = 77;

static VOCAB_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// A whitespace-separated word of the cleaned caption and the positions of its BPE tokens in
/// the final id sequence (SOT is position 0, so the first word starts at 1). Words whose
/// tokens fall past the truncation point have an empty or partial `positions`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WordTokens {
    pub word: String,
    pub positions: Vec<usize>,
}

/// The result of tokenizing one caption.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Encoding {
    /// `context_length` ids: SOT, BPE ids, EOT, zero padding.
    pub ids: Vec<i64>,
    /// Index of the (first) EOT token, the pooled position.
    pub eot_position: usize,
    /// True when the caption did not fit and was cut (EOT then sits in the last slot).
    pub truncated: bool,
    /// Word → token positions (for word-level attention analysis).
    pub words: Vec<WordTokens>,
}

/// CLIP BPE tokenizer with a per-word cache.
pub struct Tokenizer {
    encoder: HashMap<String, i64>,
    decoder: Vec<String>,
    bpe_ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
    cache: Mutex<HashMap<String, Vec<i64>>>,
    context_length: usize,
}

/// GPT-2's reversible byte → printable-unicode table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut n = 0u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(256 + n - 1).unwrap()
        };
    }
    table
}

impl Tokenizer {
    /// The shared instance with the embedded OpenAI vocabulary and context 77.
    pub fn global() -> &'static Tokenizer {
        static TOK: OnceLock<Tokenizer> = OnceLock::new();
        TOK.get_or_init(|| Tokenizer::new(CONTEXT_LENGTH))
    }

    /// Builds the tokenizer from the embedded merges file.
    pub fn new(context_length: usize) -> Tokenizer {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .expect("embedded BPE vocabulary is a valid gzip file");
        // As simple_tokenizer: skip the header line, take 49152-256-2 merges.
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(49152 - 256 - 2)
            .map(|l| {
                let mut it = l.split(' ');
                (it.next().unwrap_or("").to_string(), it.next().unwrap_or("").to_string())
            })
            .collect();
        let byte_encoder = bytes_to_unicode();
        // Python's dict order: printable bytes first, then the remapped ones.
        let mut order: Vec<char> = byte_encoder.iter().copied().filter(|&c| (c as u32) < 256).collect();
        order.extend(byte_encoder.iter().copied().filter(|&c| (c as u32) >= 256));
        let mut vocab: Vec<String> = order.iter().map(|c| c.to_string()).collect();
        vocab.extend(order.iter().map(|c| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        debug_assert_eq!(vocab.len(), VOCAB_SIZE);
        let encoder = vocab.iter().enumerate().map(|(i, s)| (s.clone(), i as i64)).collect();
        let bpe_ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
        let byte_decoder = byte_encoder.iter().enumerate().map(|(i, c)| (*c, i as u8)).collect();
        let pattern = Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
        )
        .expect("CLIP regex compiles");
        let mut cache = HashMap::new();
        cache.insert("<|startoftext|>".to_string(), vec![SOT]);
        cache.insert("<|endoftext|>".to_string(), vec![EOT]);
        Tokenizer {
            encoder,
            decoder: vocab,
            bpe_ranks,
            byte_encoder,
            byte_decoder,
            pattern,
            cache: Mutex::new(cache),
            context_length,
        }
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// BPE of one pre-token (already byte-mapped), as `SimpleTokenizer.bpe`.
    fn bpe(&self, token: &str) -> Vec<i64> {
        if let Some(ids) = self.cache.lock().unwrap().get(token) {
            return ids.clone();
        }
        let chars: Vec<char> = token.chars().collect();
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            // The adjacent pair with the lowest merge rank.
            let best = word
                .windows(2)
                .filter_map(|w| self.bpe_ranks.get(&(w[0].clone(), w[1].clone())).map(|r| (*r, w[0].clone(), w[1].clone())))
                .min_by_key(|(r, _, _)| *r);
            let Some((_, first, second)) = best else { break };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        let ids: Vec<i64> = word.iter().map(|p| self.encoder[p.as_str()]).collect();
        self.cache.lock().unwrap().insert(token.to_string(), ids.clone());
        ids
    }

    /// The cleaned, lower-cased text the BPE sees.
    pub fn normalize(text: &str) -> String {
        whitespace_clean(&basic_clean(text)).to_lowercase()
    }

    /// BPE ids of a text without SOT/EOT (as `SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        self.encode_words(&Self::normalize(text)).into_iter().flat_map(|(_, ids)| ids).collect()
    }

    /// Tokenizes each whitespace-separated word of already-normalized text.
    fn encode_words(&self, normalized: &str) -> Vec<(String, Vec<i64>)> {
        normalized
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut ids = Vec::new();
                for m in self.pattern.find_iter(w) {
                    let mapped: String = m.as_str().bytes().map(|b| self.byte_encoder[b as usize]).collect();
                    // The specials are ASCII, map to themselves and hit the seeded cache.
                    ids.extend(self.bpe(&mapped));
                }
                (w.to_string(), ids)
            })
            .collect()
    }

    /// Full encoding: SOT + ids + EOT, truncated (EOT forced last) and zero-padded.
    pub fn tokenize(&self, text: &str) -> Encoding {
        let ctx = self.context_length;
        let mut ids = vec![SOT];
        let mut words = Vec::new();
        for (word, wids) in self.encode_words(&Self::normalize(text)) {
            let start = ids.len();
            ids.extend(wids);
            let positions = (start..ids.len()).filter(|&p| p < ctx - 1).collect();
            words.push(WordTokens { word, positions });
        }
        ids.push(EOT);
        let truncated = ids.len() > ctx;
        if truncated {
            ids.truncate(ctx);
            ids[ctx - 1] = EOT;
        }
        let eot_position = ids.iter().position(|&i| i == EOT).unwrap_or(ids.len() - 1);
        ids.resize(ctx, PAD);
        Encoding { ids, eot_position, truncated, words }
    }

    /// Tokenizes a batch into a `[B, context]` int64 tensor.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S]) -> tch::Tensor {
        let flat: Vec<i64> = texts.iter().flat_map(|t| self.tokenize(t.as_ref()).ids).collect();
        tch::Tensor::from_slice(&flat).view([texts.len() as i64, self.context_length as i64])
    }

    /// Decodes ids back to text (SOT/EOT kept as their names, padding dropped).
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut s = String::new();
        for &id in ids {
            if id == PAD {
                continue;
            }
            if let Some(t) = self.decoder.get(id as usize) {
                s.push_str(t);
            }
        }
        let bytes: Vec<u8> = s
            .chars()
            .flat_map(|c| match self.byte_decoder.get(&c) {
                Some(b) => vec![*b],
                None => c.to_string().into_bytes(),
            })
            .collect();
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }

    /// The text of one token (for axis labels), with `</w>` removed.
    pub fn token_label(&self, id: i64) -> String {
        match id {
            SOT => "<sot>".into(),
            EOT => "<eot>".into(),
            _ => self.decode(&[id]).trim().to_string(),
        }
    }
}
