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
    /// The word.
    pub word: String,
    /// Positions of its tokens in the id sequence.
    pub positions: Vec<usize>,
}

/// The result of tokenizing one caption.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Encoding {
    /// `context_length` ids: SOT, BPE ids, EOT, zero padding.
    pub ids: Vec<i64>,
    /// The pooled position: the first EOT, or SOT (0) when [`Truncation::Official`] dropped
    /// EOT (the official tower pools the largest id).
    pub eot_position: usize,
    /// True when the caption did not fit and was cut (with [`Truncation::KeepEot`], EOT then
    /// sits in the last slot).
    pub truncated: bool,
    /// Word → token positions (for word-level attention analysis).
    pub words: Vec<WordTokens>,
}

/// How captions longer than the context are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the first `context − 1` ids and put EOT in the last slot (OpenAI's
    /// `clip.tokenize(truncate=True)`, OpenCLIP): the text tower pools a real EOT.
    #[default]
    KeepEot,
    /// Keep the first `context` ids and drop EOT, as the official MS-CLIP tokenizer does: the
    /// tower then pools at the largest id, SOT (for exact replication of its numbers).
    Official,
}

/// Most entries of the per-word BPE cache before it is cleared (bounds memory over long runs
/// on unbounded vocabularies of unique words).
const CACHE_ENTRIES: usize = 200_000;

/// CLIP BPE tokenizer with a per-word cache.
pub struct Tokenizer {
    encoder: HashMap<String, i64>,
    decoder: Vec<String>,
    /// `(left id, right id)` → (merge rank, merged id).
    merges: HashMap<(i64, i64), (u32, i64)>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
    cache: Mutex<HashMap<String, Vec<i64>>>,
    context_length: usize,
    truncation: Truncation,
    /// Longest vocabulary token in characters (without `</w>`): a pre-token of `m` characters
    /// yields at least `m / longest_token` BPE tokens.
    longest_token: usize,
}

/// GPT-2's reversible byte → printable-unicode table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut n = 0u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("a byte is a char")
        } else {
            n += 1;
            char::from_u32(256 + n - 1).expect("256..512 are chars")
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
        flate2::read::GzDecoder::new(VOCAB_GZ).read_to_string(&mut text).expect("embedded BPE vocabulary is a valid gzip file");
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
        let encoder: HashMap<String, i64> = vocab.iter().enumerate().map(|(i, s)| (s.clone(), i as i64)).collect();
        let merges = merges
            .iter()
            .enumerate()
            .filter_map(|(rank, (a, b))| {
                let (ia, ib, m) = (encoder.get(a)?, encoder.get(b)?, encoder.get(&format!("{a}{b}"))?);
                Some(((*ia, *ib), (rank as u32, *m)))
            })
            .collect();
        let longest_token = vocab.iter().map(|t| t.trim_end_matches("</w>").chars().count()).max().unwrap_or(1).max(1);
        let byte_decoder = byte_encoder.iter().enumerate().map(|(i, c)| (*c, i as u8)).collect();
        let pattern = Regex::new(r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+")
            .expect("CLIP regex compiles");
        let mut cache = HashMap::new();
        cache.insert("<|startoftext|>".to_string(), vec![SOT]);
        cache.insert("<|endoftext|>".to_string(), vec![EOT]);
        Tokenizer {
            encoder,
            decoder: vocab,
            merges,
            byte_encoder,
            byte_decoder,
            pattern,
            cache: Mutex::new(cache),
            context_length,
            truncation: Truncation::KeepEot,
            longest_token,
        }
    }

    /// The same tokenizer with another truncation rule.
    pub fn with_truncation(mut self, truncation: Truncation) -> Tokenizer {
        self.truncation = truncation;
        self
    }

    /// The context length.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The truncation rule.
    pub fn truncation(&self) -> Truncation {
        self.truncation
    }

    /// BPE of one pre-token (already byte-mapped), equal to `SimpleTokenizer.bpe`, in
    /// O(n log n): the naive loop merges every occurrence of the lowest-ranked adjacent pair,
    /// left to right, and repeats. Here the candidate pairs sit in a heap keyed by (rank,
    /// position); merging a pair only creates pairs that contain the merged token, which BPE
    /// learned after it (a higher rank), so popping (rank, position) order performs the same
    /// merges in the same order. Stale heap entries are skipped.
    fn bpe(&self, token: &str) -> Vec<i64> {
        if let Some(ids) = self.cache.lock().expect("the BPE cache lock is never poisoned: nothing panics while holding it").get(token) {
            return ids.clone();
        }
        let chars: Vec<char> = token.chars().collect();
        let n = chars.len();
        let mut ids: Vec<i64> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = if i + 1 == n { format!("{c}</w>") } else { c.to_string() };
                self.encoder.get(&s).copied().unwrap_or(0)
            })
            .collect();
        const NONE: usize = usize::MAX;
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let mut alive = vec![true; n];
        let mut heap = std::collections::BinaryHeap::new();
        let push = |heap: &mut std::collections::BinaryHeap<std::cmp::Reverse<(u32, usize, i64, i64)>>, i: usize, a: i64, b: i64| {
            if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
                heap.push(std::cmp::Reverse((rank, i, a, b)));
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, i, ids[i], ids[i + 1]);
        }
        while let Some(std::cmp::Reverse((_, i, a, b))) = heap.pop() {
            let j = next[i];
            if !alive[i] || ids[i] != a || j == NONE || ids[j] != b {
                continue;
            }
            ids[i] = self.merges[&(a, b)].1;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE {
                push(&mut heap, prev[i], ids[prev[i]], ids[i]);
            }
            if next[i] != NONE {
                push(&mut heap, i, ids[i], ids[next[i]]);
            }
        }
        let out: Vec<i64> = (0..n).filter(|&i| alive[i]).map(|i| ids[i]).collect();
        let mut cache = self.cache.lock().expect("the BPE cache lock is never poisoned: nothing panics while holding it");
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|k, _| k.starts_with("<|"));
        }
        cache.insert(token.to_string(), out.clone());
        out
    }

    /// The cleaned, lower-cased text the BPE sees.
    pub fn normalize(text: &str) -> String {
        whitespace_clean(&basic_clean(text)).to_lowercase()
    }

    /// BPE ids of a text without SOT/EOT (as `SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        self.encode_words(&Self::normalize(text), None).into_iter().flat_map(|(_, ids)| ids).collect()
    }

    /// Tokenizes each whitespace-separated word of already-normalized text. With `budget`,
    /// words after the first `budget` ids are listed without ids, and a pre-token longer than
    /// `budget · longest_token` characters is cut to that length before BPE: such a pre-token
    /// alone yields more than `budget` ids, so this cannot change the ids of any text whose
    /// ids fit in `budget`; it keeps tokenization linear in the input.
    fn encode_words(&self, normalized: &str, budget: Option<usize>) -> Vec<(String, Vec<i64>)> {
        let mut total = 0usize;
        normalized
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut ids = Vec::new();
                if budget.is_some_and(|b| total > b) {
                    return (w.to_string(), ids);
                }
                for m in self.pattern.find_iter(w) {
                    let mut mapped: String = m.as_str().bytes().map(|b| self.byte_encoder[b as usize]).collect();
                    if let Some(b) = budget {
                        let cut = b.saturating_add(1).saturating_mul(self.longest_token);
                        if let Some((at, _)) = mapped.char_indices().nth(cut) {
                            mapped.truncate(at);
                        }
                    }
                    // The specials are ASCII, map to themselves and hit the seeded cache.
                    ids.extend(self.bpe(&mapped));
                    if budget.is_some_and(|b| total + ids.len() > b) {
                        break;
                    }
                }
                total += ids.len();
                (w.to_string(), ids)
            })
            .collect()
    }

    /// Full encoding: SOT + ids + EOT, truncated per [`Truncation`] and zero-padded. Linear
    /// in the length of `text`.
    pub fn tokenize(&self, text: &str) -> Encoding {
        let ctx = self.context_length;
        let keep = match self.truncation {
            Truncation::KeepEot => ctx - 1,
            Truncation::Official => ctx,
        };
        let mut ids = vec![SOT];
        let mut words = Vec::new();
        for (word, wids) in self.encode_words(&Self::normalize(text), Some(ctx)) {
            let start = ids.len();
            ids.extend(wids);
            let positions = (start..ids.len()).filter(|&p| p < keep).collect();
            words.push(WordTokens { word, positions });
        }
        ids.push(EOT);
        let truncated = ids.len() > ctx;
        if truncated {
            ids.truncate(ctx);
            if self.truncation == Truncation::KeepEot {
                ids[ctx - 1] = EOT;
            }
        }
        // Without EOT (official truncation) the tower pools the largest id, SOT at 0.
        let eot_position = ids.iter().position(|&i| i == EOT).unwrap_or(0);
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
