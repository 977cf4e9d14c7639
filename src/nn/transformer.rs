//! A pre-LN transformer (causal or bidirectional), as generic functions. Each layer is
//! a checkpointed [`Block`]: on a tape over plain or dual numbers it is recorded as one
//! node and recomputed in the backward sweep, so a step's working set is one layer's
//! activations.

use super::{insert_layer_norm, insert_linear, layer_norm, linear, normal};
use crate::autodiff::ops::attention::Attention;
use crate::autodiff::{Block, Float, Indices, Params, Tensor, Value, kernels};
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
        let x = self.embed(p, tokens)?;
        Ok(self.layers_from(0, p, x))
    }

    /// The token and position embeddings' sum, `[batch, seq, d_model]`.
    fn embed<V: Value>(&self, p: &Params<V>, tokens: &Indices) -> Result<V> {
        let s = tokens.shape();
        if s.len() != 2 || s[1] == 0 || s[1] > self.max_len {
            return Err(Error::Shape {
                op: "transformer tokens [batch, seq <= max_len]",
                lhs: s.to_vec(),
                rhs: vec![self.max_len],
            });
        }
        Ok(p["tok_emb"]
            .gather_rows(tokens)?
            .add(&p["pos_emb"].slice(0, 0, s[1])))
    }

    fn layer(&self) -> Layer {
        Layer {
            n_heads: self.n_heads,
            causal: self.causal,
        }
    }

    /// Layers `first..` from their input `x`, then the final layer norm.
    fn layers_from<V: Value>(&self, first: usize, p: &Params<V>, mut x: V) -> V {
        let layer = self.layer();
        for i in first..self.n_layers {
            let names = layer_params(i);
            let mut xs: Vec<&V> = vec![&x];
            xs.extend(names.iter().map(|n| &p[n]));
            x = V::checkpoint(&layer, &xs);
        }
        layer_norm(&x, &p["ln_f.g"], &p["ln_f.b"], V::F::c(LN_EPS))
    }
}

const LN_EPS: f64 = 1e-5;

/// Layer `i`'s parameter names, in [`Layer`]'s input order.
fn layer_params(i: usize) -> [String; 16] {
    LAYER_PARAMS.map(|n| format!("h{i}.{n}"))
}

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
        assert!(
            xs.len() == 17,
            "transformer layer: expected 17 inputs, got {}",
            xs.len()
        );
        self.finish(xs[0], self.attention_inputs(xs[0], &xs[1..9]), &xs[9..])
    }
}

impl Layer {
    /// The attention's inputs `[q / sqrt(head_dim), k, v]`, projections of the layer
    /// norm of `x` (`p`: the first eight of `LAYER_PARAMS`). Each position's rows
    /// depend on that position's row of `x` alone.
    ///
    /// They are three separate linear maps rather than one fused `[d, 3d]` one: slicing
    /// the fused output would copy it (and its tangent, and their cotangents, whose VJP
    /// pads with zeros) for nothing. The heads are column blocks of the projections,
    /// read in place by the fused [`Attention`] op (no permute copies, and no `[batch,
    /// heads, seq, seq]` scores in its forward; it saves only q, k and v and recomputes
    /// the probabilities in its derivative rules). Measured against the unfused
    /// HeadScores, softmax and HeadMix: scoring 10 MB with a width-32 rater 3.01-3.11 s
    /// vs 3.39-3.41 s; the reference meta-gradient as fast, with peak memory 50.8 vs
    /// 58.3 MiB (339 vs 370 MiB at the scale flags).
    fn attention_inputs<V: Value>(&self, x: &V, p: &[&V]) -> [V; 3] {
        let [g1, b1, wq, bq, wk, bk, wv, bv] = p else {
            panic!("transformer layer: expected 8 attention parameters")
        };
        let h = layer_norm(x, g1, b1, V::F::c(LN_EPS));
        let dh = h.shape()[2] / self.n_heads;
        // Scaling q (b t d values) is cheaper than scaling the scores (b h t t).
        [
            linear(&h, wq, bq).scale(V::F::c(1.0 / (dh as f64).sqrt())),
            linear(&h, wk, bk),
            linear(&h, wv, bv),
        ]
    }

    /// The rest of the layer from its input `x` and its attention's inputs (`p`: the
    /// last eight of `LAYER_PARAMS`).
    fn finish<V: Value>(&self, x: &V, [q, k, v]: [V; 3], p: &[&V]) -> V {
        let [wo, bo, g2, b2, w1, c1, w2, c2] = p else {
            panic!("transformer layer: expected 8 output parameters")
        };
        let attention = Attention {
            heads: self.n_heads,
            causal: self.causal,
        };
        let o = V::apply(attention, &[&q, &k, &v]);
        let x = x.add(&linear(&o, wo, bo));
        let h = layer_norm(&x, g2, b2, V::F::c(LN_EPS));
        x.add(&linear(&linear(&h, w1, c1).gelu(), w2, c2))
    }
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
        Ok(self.head(p, &self.cfg.trunk(p, tokens)?))
    }

    /// Mean over positions, then the linear head: `[batch]`.
    fn head<V: Value>(&self, p: &Params<V>, trunk: &V) -> V {
        let h = trunk.mean_axis(1, false);
        linear(&h, &p["head.w"], &p["head.b"]).reshape(&[trunk.shape()[0]])
    }

    /// The first layer's input and attention inputs for every token at every position
    /// of a `seq_len` sequence (see [`FirstLayerTable`]).
    ///
    /// # Errors
    /// [`Error::Shape`] if `seq_len` is 0 or above `max_len`.
    pub(crate) fn first_layer_table<F: Float>(
        &self,
        p: &Params<Tensor<F>>,
        seq_len: usize,
    ) -> Result<FirstLayerTable<F>> {
        let vocab = self.cfg.vocab;
        let every = (0..vocab).flat_map(|t| std::iter::repeat_n(t, seq_len));
        let tokens = Indices::new(&[vocab, seq_len], every.collect())?;
        let x = self.cfg.embed(p, &tokens)?;
        let names = layer_params(0);
        let params: Vec<&Tensor<F>> = names[..8].iter().map(|n| &p[n]).collect();
        let [q, k, v] = self.cfg.layer().attention_inputs(&x, &params);
        let rows = Tensor::concat(&[&x, &q, &k, &v], 2);
        Ok(FirstLayerTable {
            seq_len,
            rows: rows.reshape(&[vocab * seq_len, 4 * self.cfg.d_model]),
        })
    }

    /// [`scores`](Self::scores) of sequences of `table.seq_len` tokens, the first
    /// layer's input and attention inputs looked up in `table` (built from the same
    /// `p`): the same bits, without the embeddings' sum, the first layer norm and three
    /// of the first layer's six products.
    ///
    /// # Errors
    /// As [`scores`](Self::scores); [`Error::Shape`] if the sequences are not
    /// `table.seq_len` long.
    pub(crate) fn scores_with_table<F: Float>(
        &self,
        p: &Params<Tensor<F>>,
        table: &FirstLayerTable<F>,
        tokens: &Indices,
    ) -> Result<Tensor<F>> {
        let l = table.seq_len;
        if tokens.shape().len() != 2 || tokens.shape()[1] != l {
            return Err(Error::Shape {
                op: "scores_with_table tokens [batch, table's seq_len]",
                lhs: tokens.shape().to_vec(),
                rhs: vec![l],
            });
        }
        // The error the embedding's lookup gives in `scores`.
        tokens.check("gather_rows", self.cfg.vocab)?;
        let at = tokens.data().iter().enumerate();
        let rows: Vec<usize> = at.map(|(i, &t)| t * l + i % l).collect();
        let [x, q, k, v] = table.lookup(&rows, tokens.shape());
        let names = layer_params(0);
        let params: Vec<&Tensor<F>> = names[8..].iter().map(|n| &p[n]).collect();
        let x = self.cfg.layer().finish(&x, [q, k, v], &params);
        Ok(self.head(p, &self.cfg.layers_from(1, p, x)))
    }
}

/// A rater's first-layer input `x` (the embeddings' sum) and attention inputs
/// `[q / sqrt(head_dim), k, v]` for every token `t` at every position `i` of a
/// `seq_len` sequence: row `t seq_len + i` of each `[vocab seq_len, d_model]` tensor.
/// They depend on the token and its position alone (a sum, a layer norm and three
/// linear maps, each row computed on its own), so when scoring many sequences of one
/// length a lookup replaces them: bitwise the same numbers, computed once.
///
/// Row `r` of the table holds the four rows side by side, `[vocab seq_len, 4 d_model]`:
/// a lookup reads one stretch of memory instead of four far apart.
#[derive(Clone, Debug)]
pub(crate) struct FirstLayerTable<F: Float> {
    seq_len: usize,
    rows: Tensor<F>,
}

impl<F: Float> FirstLayerTable<F> {
    /// `[x, q, k, v]` at table rows `rows`, each of `shape` plus `d_model`.
    fn lookup(&self, rows: &[usize], shape: &[usize]) -> [Tensor<F>; 4] {
        let table = self.rows.array().as_standard_layout();
        let table = table.as_slice().expect("standard layout");
        let d = self.rows.shape()[1] / 4;
        let mut out: [Vec<F>; 4] = std::array::from_fn(|_| kernels::overwritten(rows.len() * d));
        kernels::with_simd(
            #[inline(always)]
            || {
                for (r, &i) in rows.iter().enumerate() {
                    let src = table[i * 4 * d..(i + 1) * 4 * d].chunks_exact(d.max(1));
                    for (o, src) in out.iter_mut().zip(src) {
                        for (o, &v) in o[r * d..(r + 1) * d].iter_mut().zip(src) {
                            *o = v;
                        }
                    }
                }
            },
        );
        let mut shape = shape.to_vec();
        shape.push(d);
        out.map(|o| Tensor::from_vec(&shape, o).expect("a row per index"))
    }
}
