//! Curation with a trained rater: batch-level filtering, per-example acceptance, dataset-level discard.
