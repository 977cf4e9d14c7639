//! Checkpoint files: bit-exact round trips, config checks, damage detection.

use datarater::checkpoint::{load_checkpoint, read_checkpoint_configs, save_checkpoint};
use datarater::optim::OptState;
use datarater::trainer::{Member, MetaAdamState, TrainerState};
use datarater::{Params, Rng, Tensor};
use serde_json::json;

fn random(rng: &mut Rng, names: &[(&str, &[usize])]) -> Params<Tensor<f64>> {
    let mut p = Params::new();
    for (n, shape) in names {
        let len = shape.iter().product();
        p.insert(
            *n,
            Tensor::from_vec(shape, (0..len).map(|_| rng.normal()).collect()).unwrap(),
        );
    }
    p
}

fn state() -> TrainerState<f64, MetaAdamState<f64>> {
    let mut rng = Rng::new(7);
    let eta_names: &[(&str, &[usize])] = &[("w", &[3, 2]), ("b", &[2])];
    let theta_names: &[(&str, &[usize])] = &[("layer.w", &[2, 2]), ("layer.b", &[2])];
    let eta = random(&mut rng, eta_names);
    let members = (0..3)
        .map(|i| {
            let mut r = Rng::new(100 + i);
            r.next_u64();
            Member {
                theta: random(&mut rng, theta_names),
                opt_state: OptState {
                    step: 5 + i as usize,
                    slots: vec![random(&mut rng, theta_names), random(&mut rng, theta_names)],
                },
                meta_state: MetaAdamState {
                    m: random(&mut rng, eta_names),
                    v: random(&mut rng, eta_names),
                    t: 11,
                },
                age: 4 * i as usize,
                rng: r,
            }
        })
        .collect();
    TrainerState {
        eta,
        members,
        step: 12,
    }
}

fn assert_same(
    a: &TrainerState<f64, MetaAdamState<f64>>,
    b: &TrainerState<f64, MetaAdamState<f64>>,
) {
    assert_eq!(a.eta, b.eta);
    assert_eq!(a.step, b.step);
    assert_eq!(a.members.len(), b.members.len());
    for (x, y) in a.members.iter().zip(&b.members) {
        assert_eq!(x.theta, y.theta);
        assert_eq!(x.opt_state, y.opt_state);
        assert_eq!(x.meta_state, y.meta_state);
        assert_eq!(x.age, y.age);
        assert_eq!(x.rng.state(), y.rng.state());
    }
}

#[test]
fn round_trip_is_bit_exact_and_checks_configs() {
    let dir = std::env::temp_dir().join(format!("datarater-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let configs = json!({"lm": {"d_model": 32}, "train": {"seed": 3}});
    let s = state();
    save_checkpoint(&path, &s, &configs).unwrap();
    let back = load_checkpoint::<f64, MetaAdamState<f64>>(&path, &configs).unwrap();
    assert_same(&s, &back);
    assert_eq!(read_checkpoint_configs(&path).unwrap(), configs);
    // The restored random streams continue identically.
    let (mut a, mut b) = (s.members[1].rng.clone(), back.members[1].rng.clone());
    assert_eq!(a.next_u64(), b.next_u64());

    // Another config is refused, naming every difference.
    let other = json!({"lm": {"d_model": 64}, "train": {"seed": 3}});
    let e = load_checkpoint::<f64, MetaAdamState<f64>>(&path, &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lm.d_model: 32 (checkpoint) vs 64 (requested)"),
        "{e}"
    );

    // Damage: truncation and a flipped byte are refused.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_checkpoint::<f64, MetaAdamState<f64>>(&path, &configs).unwrap_err();
    assert!(e.to_string().contains("checkpoint.safetensors"), "{e}");
    // A flipped byte in the tensor data (the last bytes of the file).
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 5] ^= 0x10;
    std::fs::write(&path, &flipped).unwrap();
    let e = load_checkpoint::<f64, MetaAdamState<f64>>(&path, &configs).unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
