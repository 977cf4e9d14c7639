//! Rater files, checksummed safetensors and document scoring.

use datarater::curate::documents::{Aggregate, DocumentScorer, chunk_spans};
use datarater::curate::rater_file::{RaterFile, config_mismatch};
use datarater::distributed::{Communicator, SingleProcess};
use datarater::io::{DtypePolicy, decode_checked, encode_checked, write_atomic};
use datarater::nn::{SequenceScorer, TransformerConfig};
use datarater::{Error, Params, Rng, Tensor};
use std::sync::{Arc, Barrier, Mutex};

fn cfg(d_model: usize) -> TransformerConfig {
    TransformerConfig::new(d_model, 1, 2, 8)
        .with_d_ff(2 * d_model)
        .with_causal(false)
}

fn rater_file(d_model: usize) -> RaterFile<f32> {
    let scorer = SequenceScorer::new(cfg(d_model)).unwrap();
    RaterFile {
        eta: scorer.init(&mut Rng::new(0)),
        scorer,
        seq_len: 8,
        training: serde_json::json!({"outer_steps": 3}),
    }
}

#[test]
fn round_trip_keeps_every_bit_and_setting() {
    let f = rater_file(8);
    let back = RaterFile::<f32>::from_bytes("mem", &f.to_bytes().unwrap()).unwrap();
    assert_eq!(back, f);
    // Loaded in another precision, the values convert.
    let wide = RaterFile::<f64>::from_bytes("mem", &f.to_bytes().unwrap()).unwrap();
    assert_eq!(wide.eta, f.eta.cast::<f64>());
}

/// Two saves of one rater give byte-identical files (metadata in key order).
#[test]
fn equal_raters_give_byte_identical_files() {
    let first = rater_file(8).to_bytes().unwrap();
    for i in 0..8 {
        assert!(
            rater_file(8).to_bytes().unwrap() == first,
            "save {i} differs"
        );
    }
}

#[test]
fn every_flipped_byte_of_the_data_is_detected() {
    let mut p = Params::new();
    p.insert(
        "w",
        Tensor::<f64>::from_vec(&[3], vec![1.0, 2.0, 3.0]).unwrap(),
    );
    let bytes = encode_checked(&p, &[("k", "v")]).unwrap();
    assert!(decode_checked::<f64>("f", &bytes, DtypePolicy::Exact).is_ok());
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for i in 8 + header..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 1;
        let e = decode_checked::<f64>("f", &bad, DtypePolicy::Exact).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    }
    let e = decode_checked::<f64>("f", &bytes[..bytes.len() - 1], DtypePolicy::Exact).unwrap_err();
    assert!(matches!(e, Error::File { .. }), "{e}");
}

#[test]
fn config_mismatch_names_each_field() {
    let f = rater_file(8);
    assert!(f.expect_config(&f.scorer.cfg).is_ok());
    let e = f.expect_config(&cfg(16)).unwrap_err().to_string();
    assert!(e.contains("d_model 8 (file) vs 16 (expected)"), "{e}");
    assert!(e.contains("d_ff 16 (file) vs 32 (expected)"), "{e}");
    assert_eq!(config_mismatch(&cfg(4), &cfg(4)), None);
}

#[test]
fn atomic_write_replaces_whole_files() {
    let dir = std::env::temp_dir().join(format!("datarater-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("f.bin");
    write_atomic(&p, b"first").unwrap();
    write_atomic(&p, b"second version").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second version");
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn document_score_is_the_aggregate_of_its_chunk_scores() {
    let f = rater_file(8);
    let doc: Vec<u8> = b"a document of some thirty bytes".to_vec();
    let mean = f.document_scorer(Aggregate::Mean, 2).unwrap();
    let chunks: Vec<&[u8]> = chunk_spans(doc.len(), 8)
        .into_iter()
        .map(|r| &doc[r])
        .collect();
    let seq = mean.score_sequences(&chunks).unwrap();
    assert_eq!(seq.len(), 4);
    let got = mean.score(&[&doc[..]]).unwrap()[0];
    assert_eq!(got.chunks, 4);
    let want = seq.iter().sum::<f64>() / 4.0;
    assert!((got.score.unwrap() - want).abs() < 1e-12);
    let min = f.document_scorer(Aggregate::Min, 3).unwrap();
    let got = min.score(&[&doc[..]]).unwrap()[0].score.unwrap();
    assert_eq!(got, seq.iter().copied().fold(f64::INFINITY, f64::min));
    // Batching and the neighbours in a call do not change a document's score.
    let alone = mean.score(&[&doc[..]]).unwrap()[0];
    let with_others = mean
        .score(&[
            &b"another document, longer than eight"[..],
            &doc[..],
            b"short",
        ])
        .unwrap();
    assert_eq!(with_others[1], alone);
    assert_eq!(with_others[2].score, None);
}

#[test]
fn scorer_refuses_params_of_another_shape() {
    let f = rater_file(8);
    let other = SequenceScorer::new(cfg(16)).unwrap();
    let e = DocumentScorer::new(&other, &f.eta, 8, Aggregate::Mean, 4).unwrap_err();
    assert!(matches!(e, Error::Params { .. }), "{e}");
    let e = DocumentScorer::new(&f.scorer, &f.eta, 9, Aggregate::Mean, 4).unwrap_err();
    assert!(e.to_string().contains("seq_len"), "{e}");
}

#[test]
fn a_non_finite_chunk_score_is_an_error_naming_the_document() {
    // A rater damaged in one row: exactly the sequences holding byte '~' score NaN.
    let mut f = rater_file(8);
    let emb = f.eta.get_mut("tok_emb").unwrap();
    let (shape, mut data) = (emb.shape().to_vec(), emb.to_vec());
    let row = usize::from(b'~') * shape[1];
    data[row..row + shape[1]].fill(f32::NAN);
    *emb = Tensor::from_vec(&shape, data).unwrap();
    let docs: [&[u8]; 3] = [
        b"a clean document",
        b"one ~ in its first chunk, of five",
        b"clean",
    ];
    // Every chunk is checked: the minimum of the chunk scores would skip a NaN.
    for aggregate in [Aggregate::Mean, Aggregate::Min] {
        let scorer = f.document_scorer(aggregate, 2).unwrap();
        assert_eq!(
            scorer.score(&docs).unwrap_err().to_string(),
            "document 1: the rater gave a non-finite score (NaN); is the rater file damaged?"
        );
        let e = scorer
            .score_on(&docs, &SingleProcess, |i| format!("input.txt:{}", i + 1))
            .unwrap_err();
        assert!(e.to_string().starts_with("input.txt:2: "), "{e}");
        assert!(scorer.score(&[docs[0], docs[2]]).is_ok());
    }
}

/// `size` ranks as threads of one process: enough of a communicator for `score_on`.
struct ThreadRank {
    rank: usize,
    size: usize,
    slots: Arc<(Mutex<Vec<Vec<u8>>>, Barrier)>,
}

impl Communicator for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        let (slots, barrier) = &*self.slots;
        slots.lock().unwrap()[self.rank] = local.to_vec();
        barrier.wait();
        let all = slots.lock().unwrap().clone();
        barrier.wait(); // nobody writes the next round before everyone has read
        all
    }
    fn gather_bytes(&self, local: &[u8], root: usize) -> Option<Vec<Vec<u8>>> {
        let all = self.all_gather_bytes(local);
        (self.rank == root).then_some(all)
    }
    fn broadcast_bytes(&self, bytes: Vec<u8>, root: usize) -> Vec<u8> {
        self.all_gather_bytes(&bytes).swap_remove(root)
    }
    fn abort(&self, message: &str) -> ! {
        panic!("{message}")
    }
}

/// `f` on every rank of `size` thread ranks; their results in rank order.
fn on_ranks<T: Send>(size: usize, f: impl Fn(&dyn Communicator) -> T + Sync) -> Vec<T> {
    let slots = Arc::new((Mutex::new(vec![Vec::new(); size]), Barrier::new(size)));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let comm = ThreadRank {
                    rank,
                    size,
                    slots: slots.clone(),
                };
                let f = &f;
                s.spawn(move || f(&comm))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn scores_shared_over_ranks_are_bitwise_those_of_one_process() {
    let mut f = rater_file(8);
    let docs: Vec<Vec<u8>> = (0..23)
        .map(|i| format!("document {i}: {}", "words ".repeat(i % 7)).into_bytes())
        .collect();
    let scorer = f.document_scorer(Aggregate::Mean, 3).unwrap();
    let alone = scorer.score(&docs).unwrap();
    assert!(alone.iter().all(|s| s.score.is_some()));
    for size in 1..=5 {
        for got in on_ranks(size, |comm| scorer.score_on(&docs, comm, |i| i.to_string())) {
            assert_eq!(got.unwrap(), alone, "{size} ranks");
        }
    }
    // Damage the rater so that only document 10 (sequences 37..41 of 95: batches 12 and
    // 13 of 32) scores NaN: on 3 ranks, rank 1 (batches 10..21) fails, and every rank
    // reports its error.
    let emb = f.eta.get_mut("tok_emb").unwrap();
    let (shape, mut data) = (emb.shape().to_vec(), emb.to_vec());
    let row = usize::from(b'~') * shape[1];
    data[row..row + shape[1]].fill(f32::NAN);
    *emb = Tensor::from_vec(&shape, data).unwrap();
    let mut docs = docs;
    docs[10][0] = b'~';
    let scorer = f.document_scorer(Aggregate::Mean, 3).unwrap();
    for got in on_ranks(3, |comm| {
        scorer.score_on(&docs, comm, |i| format!("doc {i}"))
    }) {
        assert_eq!(
            got.unwrap_err(),
            Error::Rank {
                rank: 1,
                message:
                    "doc 10: the rater gave a non-finite score (NaN); is the rater file damaged?"
                        .into()
            }
        );
    }
}
