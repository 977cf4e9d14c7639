//! Safetensors checkpoints: exact round trips, malformed files, dtype policy.

use datarater::io::{
    DtypePolicy, METADATA_KEY, decode_params, decode_params_like, encode_params, load_params,
    load_params_like, load_params_with, save_params,
};
use datarater::{Error, Params, Rng, Tensor};
use proptest::prelude::*;
use std::path::PathBuf;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("datarater-io-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn random_params<F: datarater::Float>(seed: u64) -> Params<Tensor<F>> {
    let mut rng = Rng::new(seed);
    let mut p = Params::new();
    for (name, shape) in [
        ("embed.table", vec![7, 5]),
        ("block0.attn.wq", vec![5, 5]),
        ("block0.ln.gain", vec![5]),
        ("head.bias", vec![3]),
        ("conv", vec![2, 3, 4]),
        ("scalar", vec![]),
        ("empty", vec![0, 4]),
    ] {
        let n = shape.iter().product();
        let data = (0..n).map(|_| F::c(rng.normal() * 3.0)).collect();
        p.insert(name, Tensor::from_vec(&shape, data).unwrap());
    }
    p
}

fn file_reason<T: std::fmt::Debug>(r: Result<T, Error>, want_path: &str) -> String {
    match r {
        Err(Error::File { path, reason }) => {
            assert_eq!(path, want_path);
            reason
        }
        other => panic!("expected a File error, got {other:?}"),
    }
}

const MEM: &str = "<in-memory safetensors>";

/// Builds a safetensors file by hand, as another tool would: `(name, dtype, shape, bytes)`.
fn handmade(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)], metadata: Option<&str>) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    if let Some(m) = metadata {
        entries.push(format!("\"__metadata__\":{m}"));
    }
    for (name, dtype, shape, bytes) in tensors {
        let (b, e) = (data.len(), data.len() + bytes.len());
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{b},{e}]}}"
        ));
        data.extend_from_slice(bytes);
    }
    raw_file(&format!("{{{}}}", entries.join(",")), &data)
}

fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn f32_round_trip_is_bit_exact_including_special_values() {
    let dir = TempDir::new("f32");
    let mut p = random_params::<f32>(1);
    let specials = vec![
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MIN_POSITIVE / 8.0, // subnormal
        f32::MAX,
        f32::from_bits(0x7fc0_1234), // NaN with a payload
    ];
    p.insert(
        "specials",
        Tensor::from_vec(&[6], specials.clone()).unwrap(),
    );
    let path = dir.path("p32.safetensors");
    save_params(&path, &p, &[("model", "lm"), ("step", "42")]).unwrap();
    let (q, meta) = load_params::<f32>(&path).unwrap();
    assert_eq!(q.names().collect::<Vec<_>>(), p.names().collect::<Vec<_>>());
    for (name, t) in p.iter() {
        assert_eq!(q[name].shape(), t.shape(), "{name}");
        let bits = |t: &Tensor<f32>| t.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&q[name]), bits(t), "{name}");
    }
    assert_eq!(meta.len(), 2);
    assert_eq!(meta["model"], "lm");
    assert_eq!(meta["step"], "42");
}

#[test]
fn f64_round_trip_is_exact() {
    let dir = TempDir::new("f64");
    let p = random_params::<f64>(2);
    let path = dir.path("p64.safetensors");
    save_params(&path, &p, &[]).unwrap();
    let (q, meta) = load_params::<f64>(&path).unwrap();
    assert_eq!(q, p);
    assert!(meta.is_empty());
    // Saving again gives the same bytes (deterministic output).
    let path2 = dir.path("p64b.safetensors");
    save_params(&path2, &q, &[]).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&path2).unwrap()
    );
}

#[test]
fn non_contiguous_tensors_are_saved_in_logical_order() {
    let a = ndarray::Array2::from_shape_vec((2, 3), vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0])
        .unwrap()
        .reversed_axes(); // [3, 2], column-major in memory
    let t = Tensor::from_array(a);
    let mut p = Params::new();
    p.insert("t", t.clone());
    let (q, _) =
        decode_params::<f64>(&encode_params(&p, &[]).unwrap(), DtypePolicy::Exact).unwrap();
    assert_eq!(q["t"].shape(), &[3, 2]);
    assert_eq!(q["t"].to_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(q["t"], t);
}

#[test]
fn files_follow_the_safetensors_layout() {
    let mut p = Params::new();
    p.insert("b", Tensor::<f32>::from_vec(&[2], vec![1.0, 2.0]).unwrap());
    p.insert("a.w", Tensor::<f32>::from_vec(&[1, 1], vec![-1.5]).unwrap());
    let bytes = encode_params(&p, &[("k", "v"), ("k", "last")]).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header padded to 8 bytes");
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["k"], "last");
    assert_eq!(header["b"]["dtype"], "F32");
    assert_eq!(header["b"]["shape"], serde_json::json!([2]));
    assert_eq!(header["a.w"]["shape"], serde_json::json!([1, 1]));
    let data = &bytes[8 + n..];
    assert_eq!(data.len(), 12);
    let off = |k: &str| header[k]["data_offsets"][0].as_u64().unwrap() as usize;
    assert_eq!(data[off("a.w")..off("a.w") + 4], (-1.5f32).to_le_bytes());
    assert_eq!(data[off("b")..off("b") + 4], 1.0f32.to_le_bytes());
    assert_eq!(data[off("b") + 4..off("b") + 8], 2.0f32.to_le_bytes());
}

/// Metadata is written in key order: the same tensors and metadata, given in any
/// order, give byte-identical files (the safetensors writer alone keeps metadata in a
/// hash map, whose order differed from one save to the next), and the safetensors
/// crate itself reads them back.
#[test]
fn metadata_is_written_in_key_order_so_files_are_reproducible() {
    let p = random_params::<f32>(3);
    let meta: Vec<(String, String)> = (0..12)
        .map(|i| (format!("key{i:02}"), format!("value {i}")))
        .collect();
    let pairs: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let first = encode_params(&p, &pairs).unwrap();
    let mut reversed = pairs.clone();
    reversed.reverse();
    for i in 0..8 {
        let again = if i % 2 == 0 { &pairs } else { &reversed };
        assert!(
            encode_params(&p, again).unwrap() == first,
            "save {i} differs"
        );
    }
    let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
    let keys: Vec<usize> = (0..12)
        .map(|i| header.find(&format!("\"key{i:02}\"")).unwrap())
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{header}");
    let st = safetensors::SafeTensors::deserialize(&first).unwrap();
    assert_eq!(st.len(), p.len());
    let (_, read) = safetensors::SafeTensors::read_metadata(&first).unwrap();
    let read = read.metadata().as_ref().unwrap();
    assert_eq!(read.len(), 12);
    assert_eq!(read["key07"], "value 7");
    let (back, meta_back) = decode_params::<f32>(&first, DtypePolicy::Exact).unwrap();
    assert_eq!(back, p);
    assert_eq!(meta_back["key11"], "value 11");
    // No metadata: exactly what the safetensors writer gives.
    assert!(!String::from_utf8_lossy(&encode_params(&p, &[]).unwrap()).contains(METADATA_KEY));
}

#[test]
fn hand_made_files_from_other_tools_load() {
    let w: Vec<u8> = [0.5f64, -2.0, 8.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let bytes = handmade(
        &[
            ("z.last", "F64", vec![3], w),
            ("a.first", "F64", vec![0], vec![]),
        ],
        Some("{\"format\":\"pt\"}"),
    );
    let (p, meta) = decode_params::<f64>(&bytes, DtypePolicy::Exact).unwrap();
    assert_eq!(p["z.last"].to_vec(), vec![0.5, -2.0, 8.0]);
    assert_eq!(p["a.first"].shape(), &[0]);
    assert_eq!(meta["format"], "pt");
}

#[test]
fn dtype_mismatch_is_an_error_by_default_and_converts_on_request() {
    let dir = TempDir::new("dtype");
    let p64 = random_params::<f64>(3);
    let path = dir.path("p64.safetensors");
    save_params(&path, &p64, &[]).unwrap();
    let want = path.display().to_string();
    let reason = file_reason(load_params::<f32>(&path), &want);
    assert!(
        reason.contains("tensor `") && reason.contains("`dtype`"),
        "{reason}"
    );
    assert!(reason.contains("F64") && reason.contains("F32"), "{reason}");

    // Narrowing rounds to nearest.
    let (q32, _) = load_params_with::<f32>(&path, DtypePolicy::Convert).unwrap();
    assert_eq!(q32, p64.cast::<f32>());
    assert_ne!(
        q32.cast::<f64>(),
        p64,
        "narrowing must actually lose bits here"
    );

    // Widening is exact.
    let p32 = random_params::<f32>(4);
    let path32 = dir.path("p32.safetensors");
    save_params(&path32, &p32, &[]).unwrap();
    assert!(load_params::<f64>(&path32).is_err());
    let (q64, _) = load_params_with::<f64>(&path32, DtypePolicy::Convert).unwrap();
    assert_eq!(q64, p32.cast::<f64>());
    assert_eq!(q64.cast::<f32>(), p32);
}

#[test]
fn half_precision_converts_and_integers_are_rejected() {
    // f16: 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), +inf, 0.333 (0x3555).
    let f16_bits: [u16; 6] = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x3555];
    let f16: Vec<u8> = f16_bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    // bf16: the top half of f32 bits of 1.0, -3.5, 1e30 (truncated).
    let bf16: Vec<u8> = [1.0f32, -3.5, 1e30]
        .iter()
        .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    let bytes = handmade(
        &[("h", "F16", vec![2, 3], f16), ("b", "BF16", vec![3], bf16)],
        None,
    );
    let reason = file_reason(decode_params::<f32>(&bytes, DtypePolicy::Exact), MEM);
    assert!(
        reason.contains("tensor `b`") && reason.contains("BF16"),
        "{reason}"
    );
    let (p, _) = decode_params::<f32>(&bytes, DtypePolicy::Convert).unwrap();
    assert_eq!(p["h"].shape(), &[2, 3]);
    assert_eq!(
        p["h"].to_vec(),
        vec![
            1.0,
            -2.0,
            65504.0,
            2f32.powi(-24),
            f32::INFINITY,
            0.333_251_95
        ]
    );
    let b = p["b"].to_vec();
    assert_eq!(&b[..2], &[1.0, -3.5]);
    assert!((b[2] / 1e30 - 1.0).abs() < 1e-2);

    let ints = handmade(
        &[("idx", "I32", vec![2], vec![1, 0, 0, 0, 2, 0, 0, 0])],
        None,
    );
    for policy in [DtypePolicy::Exact, DtypePolicy::Convert] {
        let reason = file_reason(decode_params::<f64>(&ints, policy), MEM);
        assert!(
            reason.contains("tensor `idx`") && reason.contains("I32"),
            "{reason}"
        );
    }
}

#[test]
fn truncated_files_are_reported_not_panicked_on() {
    let dir = TempDir::new("trunc");
    let p = random_params::<f32>(5);
    let full = encode_params(&p, &[("a", "b")]).unwrap();
    let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let path = dir.path("cut.safetensors");
    let want = path.display().to_string();
    for cut in [
        0,
        3,
        7,
        8,
        9,
        8 + n / 2,
        8 + n,
        8 + n + 1,
        full.len() - 4,
        full.len() - 1,
    ] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let reason = file_reason(load_params::<f32>(&path), &want);
        if cut < 8 {
            assert!(
                reason.contains("8-byte header length"),
                "cut {cut}: {reason}"
            );
        } else if cut < 8 + n {
            assert!(
                reason.contains("header length field"),
                "cut {cut}: {reason}"
            );
        } else {
            // The header is intact: the error names a tensor whose data is missing.
            assert!(
                reason.contains("tensor `") && reason.contains("truncated"),
                "cut {cut}: {reason}"
            );
        }
    }
    std::fs::write(&path, &full).unwrap();
    assert_eq!(load_params::<f32>(&path).unwrap().0, p);
}

#[test]
fn garbage_and_malformed_headers_name_the_problem() {
    let mut rng = Rng::new(9);
    for len in [8, 64, 4096] {
        let junk: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        file_reason(decode_params::<f32>(&junk, DtypePolicy::Exact), MEM);
    }
    let text = b"hello, this is a plain text file and not a checkpoint at all".to_vec();
    file_reason(decode_params::<f32>(&text, DtypePolicy::Exact), MEM);

    let four = vec![0u8; 4 * 4];
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (raw_file("not json", &[]), &["not valid JSON"]),
        (raw_file("[1, 2]", &[]), &["not a JSON object"]),
        (
            raw_file("{\"w\": 3}", &[]),
            &["tensor `w`", "not a JSON object"],
        ),
        (
            raw_file("{\"w\":{\"shape\":[4],\"data_offsets\":[0,16]}}", &four),
            &["tensor `w`", "`dtype`", "missing"],
        ),
        (
            raw_file(
                "{\"w\":{\"dtype\":\"F33\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                &four,
            ),
            &["tensor `w`", "`dtype`", "F33"],
        ),
        (
            raw_file(
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}",
                &four,
            ),
            &["tensor `w`", "`shape`"],
        ),
        (
            raw_file(
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0]}}",
                &four,
            ),
            &["tensor `w`", "`data_offsets`"],
        ),
        (
            raw_file(
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,16]}}",
                &four,
            ),
            &["tensor `w`", "`data_offsets`", "`shape`", "20 bytes"],
        ),
        (
            raw_file(
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}",
                &four,
            ),
            &["tensor `w`", "`data_offsets`", "begin after end"],
        ),
        (
            raw_file(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\
                  \"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                &four,
            ),
            &["tensor `", "overlaps"],
        ),
        (
            raw_file(
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                &four,
            ),
            &["tensor `w`", "gap"],
        ),
        (
            raw_file(
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                &four,
            ),
            &["trailing bytes"],
        ),
        (
            raw_file("{\"__metadata__\":{\"k\":3}}", &[]),
            &["`__metadata__`", "`k`", "not a string"],
        ),
        (
            raw_file("{\"__metadata__\":[]}", &[]),
            &["`__metadata__`", "not a JSON object"],
        ),
        (
            {
                let mut b = u64::MAX.to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            },
            &["header length field", "limit"],
        ),
        (
            {
                let mut b = 2u64.to_le_bytes().to_vec();
                b.extend_from_slice(&[0xff, 0xfe]);
                b
            },
            &["not UTF-8"],
        ),
    ];
    for (bytes, needles) in cases {
        for policy in [DtypePolicy::Exact, DtypePolicy::Convert] {
            let reason = file_reason(decode_params::<f32>(&bytes, policy), MEM);
            for needle in needles {
                assert!(reason.contains(needle), "`{needle}` not in: {reason}");
            }
        }
    }
    // An empty but well-formed file is fine.
    let (p, m) = decode_params::<f32>(&raw_file("{}", &[]), DtypePolicy::Exact).unwrap();
    assert!(p.is_empty() && m.is_empty());
}

#[test]
fn io_errors_and_reserved_names() {
    let dir = TempDir::new("errs");
    let missing = dir.path("missing.safetensors");
    let reason = file_reason(load_params::<f64>(&missing), &missing.display().to_string());
    assert!(reason.contains("cannot read"), "{reason}");

    let p = random_params::<f64>(6);
    let bad_dir = dir.path("no-such-dir").join("x.safetensors");
    let reason = file_reason(
        save_params(&bad_dir, &p, &[]),
        &bad_dir.display().to_string(),
    );
    assert!(reason.contains("cannot write"), "{reason}");

    let mut r = Params::new();
    r.insert(METADATA_KEY, Tensor::<f32>::zeros(&[1]).unwrap());
    assert!(matches!(
        save_params(dir.path("r.safetensors"), &r, &[]),
        Err(Error::Params { name, .. }) if name == METADATA_KEY
    ));
}

// ---- loading against the model that will use the file --------------------------------

/// The `(name, reason)` of a parameter-mismatch error.
fn params_mismatch<T: std::fmt::Debug>(r: Result<T, Error>) -> (String, String) {
    match r {
        Err(Error::Params { name, reason }) => (name, reason),
        other => panic!("expected a Params error, got {other:?}"),
    }
}

#[test]
fn load_like_accepts_a_matching_file_and_reads_no_template_values() {
    let dir = TempDir::new("like-ok");
    let p = random_params::<f64>(10);
    let path = dir.path("p.safetensors");
    save_params(&path, &p, &[("step", "7")]).unwrap();
    // The template's values are irrelevant: only names and shapes count.
    let template = p.zeros_like();
    let (q, meta) = load_params_like(&path, &template).unwrap();
    assert_eq!(q, p);
    assert_eq!(meta["step"], "7");
    let (q, _) = decode_params_like(&std::fs::read(&path).unwrap(), &template).unwrap();
    assert_eq!(q, p);
}

#[test]
fn load_like_names_a_missing_tensor() {
    let dir = TempDir::new("like-missing");
    let model = random_params::<f32>(11);
    let mut saved = model.clone();
    saved = saved
        .iter()
        .filter(|(n, _)| *n != "conv")
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let path = dir.path("p.safetensors");
    save_params(&path, &saved, &[]).unwrap();
    let (name, reason) = params_mismatch(load_params_like(&path, &model));
    assert_eq!(name, "conv");
    assert!(reason.contains("missing"), "{reason}");
    assert!(reason.contains(&path.display().to_string()), "{reason}");
    assert!(reason.contains("[2, 3, 4]"), "{reason}");
    // Plain loading accepts the same file: the check is what load_params_like adds.
    assert!(load_params::<f32>(&path).is_ok());
}

#[test]
fn load_like_names_an_unexpected_tensor() {
    let model = random_params::<f32>(12);
    let mut saved = model.clone();
    saved.insert("block1.extra", Tensor::zeros(&[2]).unwrap());
    let bytes = encode_params(&saved, &[]).unwrap();
    let (name, reason) = params_mismatch(decode_params_like(&bytes, &model));
    assert_eq!(name, "block1.extra");
    assert!(reason.contains("unexpected"), "{reason}");
    assert!(reason.contains(MEM), "{reason}");
}

#[test]
fn load_like_names_a_shape_mismatch() {
    let dir = TempDir::new("like-shape");
    let model = random_params::<f64>(13);
    let mut saved = model.clone();
    saved.insert("head.bias", Tensor::zeros(&[4]).unwrap());
    let path = dir.path("p.safetensors");
    save_params(&path, &saved, &[]).unwrap();
    let (name, reason) = params_mismatch(load_params_like(&path, &model));
    assert_eq!(name, "head.bias");
    assert!(reason.contains("[4]") && reason.contains("[3]"), "{reason}");
    // Same element count, other shape: still a mismatch.
    saved.insert("head.bias", model["head.bias"].clone());
    saved.insert("block0.attn.wq", Tensor::zeros(&[25]).unwrap());
    save_params(&path, &saved, &[]).unwrap();
    let (name, reason) = params_mismatch(load_params_like(&path, &model));
    assert_eq!(name, "block0.attn.wq");
    assert!(
        reason.contains("[25]") && reason.contains("[5, 5]"),
        "{reason}"
    );
}

#[test]
fn load_like_names_a_dtype_mismatch() {
    let model = random_params::<f32>(14);
    // The same names and shapes saved in f64.
    let bytes = encode_params(&model.cast::<f64>(), &[]).unwrap();
    let (name, reason) = params_mismatch(decode_params_like(&bytes, &model));
    assert_eq!(name, "block0.attn.wq", "first name in order");
    assert!(reason.contains("F64") && reason.contains("F32"), "{reason}");
}

#[test]
fn load_like_reports_the_first_mismatch_in_name_order() {
    let model = random_params::<f64>(15);
    let mut saved = Params::new();
    for (n, t) in model.iter() {
        match n {
            "block0.ln.gain" => {}                                        // missing
            "head.bias" => saved.insert(n, Tensor::zeros(&[9]).unwrap()), // wrong shape
            _ => saved.insert(n, t.clone()),
        }
    }
    saved.insert("zzz", Tensor::zeros(&[1]).unwrap()); // unexpected
    saved.insert("aaa", Tensor::zeros(&[1]).unwrap()); // unexpected, and first of all
    let bytes = encode_params(&saved, &[]).unwrap();
    let name_of = |saved: &Params<Tensor<f64>>| {
        params_mismatch(decode_params_like(
            &encode_params(saved, &[]).unwrap(),
            &model,
        ))
        .0
    };
    assert_eq!(params_mismatch(decode_params_like(&bytes, &model)).0, "aaa");
    let mut s = saved.clone();
    s = s
        .iter()
        .filter(|(n, _)| *n != "aaa")
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    assert_eq!(name_of(&s), "block0.ln.gain");
    s.insert("block0.ln.gain", model["block0.ln.gain"].clone());
    assert_eq!(name_of(&s), "head.bias");
    s.insert("head.bias", model["head.bias"].clone());
    assert_eq!(name_of(&s), "zzz");
}

#[test]
fn load_like_reports_a_malformed_file_as_a_file_error_first() {
    let model = random_params::<f32>(16);
    let mut bytes = encode_params(&model, &[]).unwrap();
    bytes.pop(); // truncated: the format problem wins over any mismatch
    let reason = file_reason(decode_params_like(&bytes, &model), MEM);
    assert!(
        reason.contains("trailing") || reason.contains("past the end"),
        "{reason}"
    );
    let dir = TempDir::new("like-missing-file");
    let path = dir.path("absent.safetensors");
    let reason = file_reason(load_params_like(&path, &model), &path.display().to_string());
    assert!(reason.contains("cannot read"), "{reason}");
}

// ---- hostile bytes: every loader returns Ok or Err, never panics -----------------------

/// Runs every loader on `bytes` (in memory and from a file) with both element types and
/// both dtype policies, with and without a template. Any panic fails the calling test;
/// the results themselves may be `Ok` or `Err`.
fn every_loader(bytes: &[u8], path: &std::path::Path) {
    for policy in [DtypePolicy::Exact, DtypePolicy::Convert] {
        let _ = decode_params::<f32>(bytes, policy);
        let _ = decode_params::<f64>(bytes, policy);
    }
    let t32 = random_params::<f32>(1);
    let t64 = random_params::<f64>(1);
    let _ = decode_params_like(bytes, &t32);
    let _ = decode_params_like(bytes, &t64);
    std::fs::write(path, bytes).unwrap();
    let _ = load_params::<f32>(path);
    let _ = load_params::<f64>(path);
    for policy in [DtypePolicy::Exact, DtypePolicy::Convert] {
        let _ = load_params_with::<f32>(path, policy);
        let _ = load_params_with::<f64>(path, policy);
    }
    let _ = load_params_like(path, &t32);
    let _ = load_params_like(path, &t64);
    // A template that agrees with whatever the file declares, so the like-loaders get
    // past the name and shape checks to the data as well.
    if let Ok((p, _)) = decode_params::<f32>(bytes, DtypePolicy::Convert) {
        let _ = decode_params_like(bytes, &p);
        let _ = load_params_like(path, &p);
        let _ = decode_params_like(bytes, &p.cast::<f64>());
    }
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let dir = TempDir::new("every-cut");
    let path = dir.path("cut.safetensors");
    let p = random_params::<f32>(21);
    let full = encode_params(&p, &[("k", "v")]).unwrap();
    for cut in 0..full.len() {
        every_loader(&full[..cut], &path);
        // Each of the strict loaders must say it failed (the file is incomplete).
        file_reason(decode_params::<f32>(&full[..cut], DtypePolicy::Exact), MEM);
        file_reason(decode_params_like(&full[..cut], &p), MEM);
    }
    every_loader(&full, &path);
    assert_eq!(decode_params_like(&full, &p).unwrap().0, p);
}

/// JSON for a header field value: ordinary and hostile numbers, negative, fractional,
/// huge, or not numbers at all.
fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..64).prop_map(|n| n.to_string()),
        Just("0".to_string()),
        Just((1u64 << 31).to_string()),
        Just((1u64 << 32).to_string()),
        Just((1u64 << 62).to_string()),
        Just((1u64 << 63).to_string()),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_string()), // 2^64
        Just("1e300".to_string()),
        Just("-1".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("1.5".to_string()),
        Just("null".to_string()),
        Just("\"8\"".to_string()),
        Just("[]".to_string()),
    ]
}

fn json_dtype() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "\"F32\"",
        "\"F64\"",
        "\"F16\"",
        "\"BF16\"",
        "\"F8_E4M3\"",
        "\"F8_E5M2\"",
        "\"F4\"",
        "\"F6_E2M3\"",
        "\"I64\"",
        "\"U8\"",
        "\"BOOL\"",
        "\"C64\"",
        "\"f32\"",
        "\"\"",
        "7",
        "null",
    ])
    .prop_map(str::to_string)
}

/// A hand-made header with hostile shapes and offsets, and some data bytes.
fn crafted_file() -> impl Strategy<Value = Vec<u8>> {
    let entry = (
        prop::sample::select(vec!["a", "b", "__metadata__", "", "a.b"]),
        json_dtype(),
        prop::collection::vec(json_number(), 0..4),
        prop::collection::vec(json_number(), 0..4),
    )
        .prop_map(|(name, dtype, shape, offsets)| {
            format!(
                "\"{name}\":{{\"dtype\":{dtype},\"shape\":[{}],\"data_offsets\":[{}]}}",
                shape.join(","),
                offsets.join(",")
            )
        });
    (
        prop::collection::vec(entry, 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(entries, data)| raw_file(&format!("{{{}}}", entries.join(",")), &data))
}

/// Files that are wrong before the tensors: lengths, encodings, JSON shapes.
fn hostile_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // A length prefix far larger than the file (or than memory).
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..32)).prop_map(|(n, rest)| {
            let mut b = n.to_le_bytes().to_vec();
            b.extend(rest);
            b
        }),
        Just({
            let mut b = u64::MAX.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        // Deeply nested JSON.
        (1usize..5000).prop_map(|d| raw_file(&("[".repeat(d) + &"]".repeat(d)), &[])),
        (1usize..5000)
            .prop_map(|d| { raw_file(&("{\"a\":".repeat(d) + "1" + &"}".repeat(d)), &[]) }),
        // Non-UTF-8 bytes inside the header.
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|h| {
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend(h);
            b
        }),
        Just(raw_bytes_header(b"{\"a\xff\":{}}")),
        Just(raw_file(
            "{\"__metadata__\":{\"k\":{\"nested\":[1,2]}}}",
            &[]
        )),
        Just(raw_file(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4294967296,4294967296],\"data_offsets\":[0,0]}}",
            &[]
        )),
        Just(raw_file(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[0,18446744073709551615,2],\"data_offsets\":[0,0]}}",
            &[]
        )),
    ]
}

fn raw_bytes_header(h: &[u8]) -> Vec<u8> {
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h);
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = TempDir::new("hostile-random");
        every_loader(&bytes, &dir.path("f.safetensors"));
    }

    #[test]
    fn byte_flips_in_a_valid_file_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
        f64_file in any::<bool>(),
    ) {
        let dir = TempDir::new("hostile-flip");
        let mut bytes = if f64_file {
            encode_params(&random_params::<f64>(3), &[("k", "v")]).unwrap()
        } else {
            encode_params(&random_params::<f32>(3), &[("k", "v")]).unwrap()
        };
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        every_loader(&bytes, &dir.path("f.safetensors"));
    }

    #[test]
    fn crafted_headers_never_panic(bytes in crafted_file()) {
        let dir = TempDir::new("hostile-crafted");
        every_loader(&bytes, &dir.path("f.safetensors"));
    }

    #[test]
    fn hostile_headers_never_panic(bytes in hostile_header()) {
        let dir = TempDir::new("hostile-header");
        every_loader(&bytes, &dir.path("f.safetensors"));
        // None of these is a valid file.
        prop_assert!(decode_params::<f32>(&bytes, DtypePolicy::Convert).is_err());
    }
}
