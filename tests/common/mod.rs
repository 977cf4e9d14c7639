//! The small text setting the memory tests share (each test binary holds one test, so
//! the counting allocator sees no other test's allocations).

use datarater::data::Corpus;
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::Adam;
use datarater::trainer::{Sequences, TextLm, TextPool, TextRater};

fn cfg(causal: bool) -> TransformerConfig {
    TransformerConfig::new(16, 2, 2, 16)
        .with_d_ff(32)
        .with_causal(causal)
}

/// A pool of 64 shipped 16-byte sequences drawn `batch` at a time, a 2-layer byte LM
/// with Adam, and a rater of the same shape.
pub fn tiny_text(batch: usize) -> (TextPool, TextLm<Adam<f64>>, TextRater) {
    let seqs = Corpus::embedded().sequences(16).unwrap();
    let pool = TextPool::new(Sequences::from_rows(&seqs[..64]).unwrap(), batch).unwrap();
    let inner = TextLm::new(CausalLm::new(cfg(true)).unwrap(), Adam::new(1e-2)).unwrap();
    let rater = TextRater {
        scorer: SequenceScorer::new(cfg(false)).unwrap(),
    };
    (pool, inner, rater)
}
