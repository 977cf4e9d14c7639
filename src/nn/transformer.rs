//! A pre-LN transformer (causal or bidirectional), as generic functions. Each layer is
//! a checkpointed [`Block`]: on a tape over plain or dual numbers it is recorded as one
//! node and recomputed in the backward sweep, so a step's working set is one layer's
//! activations.

use super::{insert_layer_norm, insert_linear, layer_norm, linear, normal};
use crate::autodiff::ops::attention::Attention;
use crate::autodiff::{Block, Float, Indices, Params, Tensor, Value};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Shape of a transformer. Build it with [`TransformerConfig::new`] and the `with_*`
/// methods:
///
/// ```
/// use datarater::nn::{SequenceScorer, TransformerConfig};
/// let lm = TransformerConfig::new(32, 2, 2, 64); // d_model, n_layers, n_heads, max_len
/// assert_eq!((lm.vocab, lm.d_ff, lm.causal), (256, 128, true));
/// let rater = SequenceScorer::new(TransformerConfig::new(32, 1, 2, 64).with_d_ff(64))?;
/// assert!(!rater.cfg.causal);
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TransformerConfig {
    /// Vocabulary size (256 for bytes).
    pub vocab: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of layers.
    pub n_layers: usize,
    /// Attention heads per layer (must divide `d_model`).
    pub n_heads: usize,
    /// Hidden width of each MLP (4 x `d_model` is usual).
    pub d_ff: usize,
    /// Longest sequence (learned position embeddings).
    pub max_len: usize,
    /// Causal (language model) or bidirectional (rater) attention.
    pub causal: bool,
}

with_fields!(TransformerConfig {
    /// Sets [`vocab`](TransformerConfig::vocab).
    with_vocab => vocab: usize,
    /// Sets [`d_model`](TransformerConfig::d_model) (leaves `d_ff` as it is).
    with_d_model => d_model: usize,
    /// Sets [`n_layers`](TransformerConfig::n_layers).
    with_n_layers => n_layers: usize,
    /// Sets [`n_heads`](TransformerConfig::n_heads).
    with_n_heads => n_heads: usize,
    /// Sets [`d_ff`](TransformerConfig::d_ff).
    with_d_ff => d_ff: usize,
    /// Sets [`max_len`](TransformerConfig::max_len).
    with_max_len => max_len: usize,
    /// Sets [`causal`](TransformerConfig::causal).
    with_causal => causal: bool,
});

impl TransformerConfig {
    /// A byte-level (`vocab` 256) causal transformer with the usual MLP width
    /// `d_ff = 4 d_model` (checked by [`validate`](Self::validate)). [`CausalLm::new`]
    /// and [`SequenceScorer::new`] set `causal` themselves.
    pub fn new(d_model: usize, n_layers: usize, n_heads: usize, max_len: usize) -> Self {
        TransformerConfig {
            vocab: 256,
            d_model,
            n_layers,
            n_heads,
            d_ff: d_model.saturating_mul(4),
            max_len,
            causal: true,
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab", self.vocab),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
            ("max_len", self.max_len),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config {
                field,
                reason: "must be positive".into(),
            });
        }
        if self.d_model % self.n_heads != 0 {
            return Err(Error::Config {
                field: "n_heads",
                reason: format!("{} does not divide d_model {}", self.n_heads, self.d_model),
            });
        }
        Ok(())
    }

    /// Random initial parameters for the trunk (embeddings, layers, final norm).
    pub fn init_trunk<F: Float>(&self, rng: &mut Rng) -> Params<Tensor<F>> {
        let (d, l) = (self.d_model, self.n_layers);
        let mut p = Params::new();
        p.insert("tok_emb", normal(rng, &[self.vocab, d], 0.02));
        p.insert("pos_emb", normal(rng, &[self.max_len, d], 0.02));
        let std = 1.0 / (d as f64).sqrt();
        let resid = std / ((2 * l) as f64).sqrt();
        for i in 0..l {
            insert_layer_norm(&mut p, &format!("h{i}.ln1"), d);
            for proj in ["q", "k", "v"] {
                insert_linear(&mut p, &format!("h{i}.attn.{proj}"), rng, d, d, std);
            }
            insert_linear(&mut p, &format!("h{i}.attn.out"), rng, d, d, resid);
            insert_layer_norm(&mut p, &format!("h{i}.ln2"), d);
            insert_linear(&mut p, &format!("h{i}.mlp.fc"), rng, d, self.d_ff, std);
            insert_linear(
                &mut p,
                &format!("h{i}.mlp.proj"),
                rng,
                self.d_ff,
                d,
                resid / (self.d_ff as f64 / d as f64).sqrt(),
            );
        }
        insert_layer_norm(&mut p, "ln_f", d);
        p
    }

    /// The trunk's parameters plus a linear head `d_model -> out`.
    fn init_with_head<F: Float>(&self, rng: &mut Rng, out: usize) -> Params<Tensor<F>> {
        let mut p = self.init_trunk(rng);
        let std = 1.0 / (self.d_model as f64).sqrt();
        insert_linear(&mut p, "head", rng, self.d_model, out, std);
        p
    }

    /// Token ids `[batch, seq]` to final-normed hidden states `[batch, seq, d_model]`.
    pub fn trunk<V: Value>(&self, p: &Params<V>, tokens: &Indices) -> Result<V> {
        let s = tokens.shape();
        if s.len() != 2 || s[1] == 0 || s[1] > self.max_len {
            return Err(Error::Shape {
                op: "transformer tokens [batch, seq <= max_len]",
                lhs: s.to_vec(),
                rhs: vec![self.max_len],
            });
        }
        let mut x = p["tok_emb"]
            .gather_rows(tokens)?
            .add(&p["pos_emb"].slice(0, 0, s[1]));
        let layer = Layer {
            n_heads: self.n_heads,
            causal: self.causal,
        };
        for i in 0..self.n_layers {
            let names = LAYER_PARAMS.map(|n| format!("h{i}.{n}"));
            let mut xs: Vec<&V> = vec![&x];
            xs.extend(names.iter().map(|n| &p[n]));
            x = V::checkpoint(&layer, &xs);
        }
        Ok(layer_norm(&x, &p["ln_f.g"], &p["ln_f.b"], V::F::c(LN_EPS)))
    }
}

const LN_EPS: f64 = 1e-5;

const LAYER_PARAMS: [&str; 16] = [
    "ln1.g",
    "ln1.b",
    "attn.q.w",
    "attn.q.b",
    "attn.k.w",
    "attn.k.b",
    "attn.v.w",
    "attn.v.b",
    "attn.out.w",
    "attn.out.b",
    "ln2.g",
    "ln2.b",
    "mlp.fc.w",
    "mlp.fc.b",
    "mlp.proj.w",
    "mlp.proj.b",
];

/// One pre-LN layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`. Inputs: `x` then the
/// sixteen tensors of `LAYER_PARAMS`.
#[derive(Clone, Debug)]
struct Layer {
    n_heads: usize,
    causal: bool,
}

impl<F: Float> Block<F> for Layer {
    fn apply<V: Value<F = F>>(&self, xs: &[&V]) -> V {
        let [
            x,
            g1,
            b1,
            wq,
            bq,
            wk,
            bk,
            wv,
            bv,
            wo,
            bo,
            g2,
            b2,
            w1,
            c1,
            w2,
            c2,
        ] = xs
        else {
            panic!("transformer layer: expected 17 inputs, got {}", xs.len())
        };
        let eps = F::c(LN_EPS);
        let h = layer_norm(*x, g1, b1, eps);
        let qkv = [(*wq, *bq), (*wk, *bk), (*wv, *bv)];
        let x = x.add(&attention(&h, qkv, wo, bo, self.n_heads, self.causal));
        let h = layer_norm(&x, g2, b2, eps);
        x.add(&linear(&linear(&h, w1, c1).gelu(), w2, c2))
    }
}

/// Multi-head self-attention on `[batch, seq, d]`; `qkv` holds the (weight, bias) of
/// the query, key and value projections. They are three separate linear maps rather
/// than one fused `[d, 3d]` one: slicing the fused output would copy it (and its
/// tangent, and their cotangents, whose VJP pads with zeros) for nothing. The heads are
/// column blocks of the projections, read in place by the fused [`Attention`] op (no
/// permute copies, and no `[batch, heads, seq, seq]` scores in its forward; it saves
/// only q, k and v and recomputes the probabilities in its derivative rules). Measured
/// against the unfused HeadScores, softmax and HeadMix: scoring 10 MB with a width-32
/// rater 3.01-3.11 s vs 3.39-3.41 s; the reference meta-gradient as fast, with peak
/// memory 50.8 vs 58.3 MiB (339 vs 370 MiB at the scale flags).
fn attention<V: Value>(
    h: &V,
    qkv: [(&V, &V); 3],
    wo: &V,
    bo: &V,
    n_heads: usize,
    causal: bool,
) -> V {
    let dh = h.shape()[2] / n_heads;
    let proj = |i: usize| linear(h, qkv[i].0, qkv[i].1);
    // Scaling q (b t d values) is cheaper than scaling the scores (b h t t).
    let q = proj(0).scale(V::F::c(1.0 / (dh as f64).sqrt()));
    let (k, v) = (proj(1), proj(2));
    let o = V::apply(
        Attention {
            heads: n_heads,
            causal,
        },
        &[&q, &k, &v],
    );
    linear(&o, wo, bo)
}

/// A byte-level causal language model: transformer trunk plus a linear head to the
/// vocabulary. Its per-example loss is the mean next-token cross-entropy.
#[derive(Clone, Debug, PartialEq)]
pub struct CausalLm {
    /// The trunk's shape (`causal` is forced to true).
    pub cfg: TransformerConfig,
}

impl CausalLm {
    /// Validates the config.
    pub fn new(mut cfg: TransformerConfig) -> Result<Self> {
        cfg.causal = true;
        cfg.validate()?;
        Ok(CausalLm { cfg })
    }
    /// Random initial parameters.
    pub fn init<F: Float>(&self, rng: &mut Rng) -> Params<Tensor<F>> {
        self.cfg.init_with_head(rng, self.cfg.vocab)
    }
    /// Logits `[batch, seq, vocab]`.
    pub fn logits<V: Value>(&self, p: &Params<V>, inputs: &Indices) -> Result<V> {
        Ok(linear(
            &self.cfg.trunk(p, inputs)?,
            &p["head.w"],
            &p["head.b"],
        ))
    }
    /// Mean next-token cross-entropy per sequence, `[batch]`: `targets[b, t]` is the
    /// token that follows `inputs[b, ..= t]`.
    pub fn per_example_loss<V: Value>(
        &self,
        p: &Params<V>,
        inputs: &Indices,
        targets: &Indices,
    ) -> Result<V> {
        if inputs.shape() != targets.shape() {
            return Err(Error::Shape {
                op: "CausalLm targets",
                lhs: inputs.shape().to_vec(),
                rhs: targets.shape().to_vec(),
            });
        }
        Ok(self
            .logits(p, inputs)?
            .cross_entropy(targets)?
            .mean_axis(1, false))
    }
}

/// A bidirectional transformer that pools a sequence to one score: mean over positions
/// of the final hidden states, then a linear map to a scalar.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceScorer {
    /// The trunk's shape (`causal` is forced to false).
    pub cfg: TransformerConfig,
}

impl SequenceScorer {
    /// Validates the config.
    pub fn new(mut cfg: TransformerConfig) -> Result<Self> {
        cfg.causal = false;
        cfg.validate()?;
        Ok(SequenceScorer { cfg })
    }
    /// Random initial parameters.
    pub fn init<F: Float>(&self, rng: &mut Rng) -> Params<Tensor<F>> {
        self.cfg.init_with_head(rng, 1)
    }
    /// One raw score per sequence, `[batch]`.
    pub fn scores<V: Value>(&self, p: &Params<V>, tokens: &Indices) -> Result<V> {
        let h = self.cfg.trunk(p, tokens)?.mean_axis(1, false);
        Ok(linear(&h, &p["head.w"], &p["head.b"]).reshape(&[tokens.shape()[0]]))
    }
}
