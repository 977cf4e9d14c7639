//! `Params`: a group of named tensors (a model's weights), in any algebra.

use super::float::Float;
use super::tensor::Tensor;
use super::value::Value;
use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Named tensors, ordered by name. The same structure holds weights ([`Tensor`]),
/// tangents, gradients, and their tape or dual counterparts inside transforms.
///
/// ```
/// use datarater::{Params, Tensor};
/// let mut p = Params::new();
/// p.insert("w", Tensor::<f64>::zeros(&[2, 3]).unwrap());
/// assert_eq!(p["w"].shape(), &[2, 3]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Params<V> {
    entries: BTreeMap<String, V>,
}

impl<V> Default for Params<V> {
    fn default() -> Self {
        Params {
            entries: BTreeMap::new(),
        }
    }
}

impl<V> Params<V> {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, v: V) {
        self.entries.insert(name.into(), v);
    }
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&V> {
        self.entries.get(name)
    }
    /// Mutable access to the tensor called `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.entries.get_mut(name)
    }
    /// `(name, tensor)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// Tensors in name order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values()
    }
    /// Names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Applies `f` to every tensor.
    pub fn map<W>(&self, mut f: impl FnMut(&V) -> W) -> Params<W> {
        Params {
            entries: self
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), f(v)))
                .collect(),
        }
    }
    /// The sub-group whose names start with `prefix.`, with the prefix removed.
    pub fn scope(&self, prefix: &str) -> Params<V>
    where
        V: Clone,
    {
        let p = format!("{prefix}.");
        Params {
            entries: self
                .entries
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
                .collect(),
        }
    }
    /// Adds every tensor of `other` under `prefix.name`.
    pub fn extend_scoped(&mut self, prefix: &str, other: Params<V>) {
        for (k, v) in other.entries {
            self.entries.insert(format!("{prefix}.{k}"), v);
        }
    }
}

impl<V: Value> Params<V> {
    /// Checks that `other` has the same names and shapes.
    pub fn check_like<W: Value>(&self, other: &Params<W>) -> Result<()> {
        for (k, v) in &self.entries {
            let Some(w) = other.entries.get(k) else {
                return Err(Error::Params {
                    name: k.clone(),
                    reason: "missing in the other group".into(),
                });
            };
            if v.shape() != w.shape() {
                return Err(Error::Params {
                    name: k.clone(),
                    reason: format!("shape {:?} vs {:?}", v.shape(), w.shape()),
                });
            }
        }
        if let Some(k) = other
            .entries
            .keys()
            .find(|k| !self.entries.contains_key(*k))
        {
            return Err(Error::Params {
                name: k.clone(),
                reason: "unexpected extra tensor".into(),
            });
        }
        Ok(())
    }
    /// Combines two groups with the same names and shapes tensor by tensor.
    pub fn zip_map<W: Value, U>(
        &self,
        other: &Params<W>,
        mut f: impl FnMut(&V, &W) -> U,
    ) -> Result<Params<U>> {
        self.check_like(other)?;
        Ok(Params {
            entries: self
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), f(v, &other.entries[k])))
                .collect(),
        })
    }
    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.entries
            .values()
            .map(|v| v.shape().iter().product::<usize>())
            .sum()
    }
}

impl<F: Float> Params<Tensor<F>> {
    /// Zeros with the same names and shapes.
    pub fn zeros_like(&self) -> Self {
        self.map(|t| Tensor::filled(t.shape(), F::zero()))
    }
    /// `sum_k <self_k, other_k>` (names must match).
    pub fn dot(&self, other: &Self) -> Result<F> {
        Ok(self
            .zip_map(other, |a, b| a.dot_all(b))?
            .values()
            .fold(F::zero(), |s, &x| s + x))
    }
    /// Global L2 norm.
    pub fn norm(&self) -> F {
        self.values()
            .map(|t| t.dot_all(t))
            .fold(F::zero(), |s, x| s + x)
            .sqrt()
    }
    /// `self + alpha * other` (names must match).
    pub fn add_scaled(&self, other: &Self, alpha: F) -> Result<Self> {
        self.zip_map(other, |a, b| {
            Tensor::from_array(a.array() + &(b.array() * alpha))
        })
    }
    /// `alpha * self`.
    pub fn scaled(&self, alpha: F) -> Self {
        self.map(|a| Tensor::from_array(a.array() * alpha))
    }
    /// Name of the first tensor holding a NaN or infinity.
    pub fn first_non_finite(&self) -> Option<&str> {
        self.iter().find(|(_, t)| !t.is_finite()).map(|(k, _)| k)
    }
    /// Converts the element type.
    pub fn cast<G: Float>(&self) -> Params<Tensor<G>> {
        self.map(|t| t.cast())
    }
    /// Bytes held by all tensors.
    pub fn nbytes(&self) -> usize {
        self.values().map(Tensor::nbytes).sum()
    }
}

impl<V> std::ops::Index<&str> for Params<V> {
    type Output = V;
    /// # Panics
    /// If there is no tensor called `name` (a bug in the model code that names it).
    fn index(&self, name: &str) -> &V {
        self.entries
            .get(name)
            .unwrap_or_else(|| panic!("no parameter named `{name}`"))
    }
}

impl<V> FromIterator<(String, V)> for Params<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        Params {
            entries: iter.into_iter().collect(),
        }
    }
}
