//! Corpora, byte-level sequences and corruption generators.
