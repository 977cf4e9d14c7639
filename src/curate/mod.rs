//! Curation with a trained rater: batch-level filtering, per-example acceptance, dataset-level discard.
//!
//! Everything here works on plain scores (`&[f64]`, higher = better data) and closures,
//! independently of any model:
//!
//! * **Batch-level filtering** (the DataRater paper's online filter): to fill a batch of
//!   `N` while discarding a fraction `rho`, draw [`draw_size`]`(N, rho) = ceil(N / (1 - rho))`
//!   candidates, score them, and keep the top `N` with [`filter_batch`].
//! * **Per-example acceptance** for streaming data: an example whose score has CDF value
//!   `p` under the score distribution survives draw-`n`-keep-top-`N` with probability
//!   [`acceptance_probability`]`(p, n, N)`; [`EmpiricalCdf`] estimates `p` from a sample
//!   of scores and [`Acceptor`] turns it into a seeded Bernoulli decision per example.
//! * **Whole documents**: [`documents`] cuts documents into the rater's sequences,
//!   scores them in parallel and aggregates one score per document;
//!   [`rater_file`] saves and loads a trained rater with its config.
//! * **Dataset-level discard**: [`discard_bottom`] keeps all but the lowest-scoring
//!   fraction, and [`sweep_discard_fractions`] tries several fractions with a
//!   user-supplied evaluation (e.g. train a small model, return held-out loss) and picks
//!   the best.
//!
//! ```
//! use datarater::curate::{draw_size, filter_batch};
//! let n = draw_size(4, 0.5)?; // draw 8 to keep 4
//! assert_eq!(n, 8);
//! let scores = [0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6];
//! assert_eq!(filter_batch(&scores, 4)?, vec![1, 3, 5, 7]);
//! # Ok::<(), datarater::Error>(())
//! ```

mod accept;
pub mod documents;
mod filter;
mod metrics;
pub mod rater_file;
mod sweep;

pub use accept::{Acceptor, EmpiricalCdf, accept, acceptance_probability};
pub use filter::{discard_bottom, draw_size, filter_batch, rank_desc};
pub use metrics::{auc, spearman};
pub use sweep::{DEFAULT_DISCARD_FRACTIONS, SweepPoint, SweepResult, sweep_discard_fractions};
