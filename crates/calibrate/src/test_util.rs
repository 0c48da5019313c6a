//! A synthetic held-out set for the tests.

use crate::{Confidence, ExitScores};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` samples, 3 exits, 10 classes. Each sample has a difficulty; later exits
/// are more skilled, so more often right, and their confidence tracks (with
/// noise) whether they are right. Confidences are continuous (ties are rare).
pub(crate) fn synthetic(n: usize) -> ExitScores {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let mut conf = vec![Vec::new(); 3];
    let mut pred = vec![Vec::new(); 3];
    for &label in &labels {
        let difficulty: f32 = rng.random();
        for k in 0..3 {
            let skill = 0.5 + 0.2 * k as f32;
            let ease = (1.0 - difficulty) * skill;
            conf[k].push(0.7 * ease + 0.3 * rng.random::<f32>());
            let right = ease + 0.3 * rng.random::<f32>() > 0.45;
            pred[k].push(if right { label } else { (label + 1) % 10 });
        }
    }
    // The ensemble is right where most exits are (a plain majority vote).
    let ensemble = (0..n)
        .map(|i| {
            let right = (0..3).filter(|&k| pred[k][i] == labels[i]).count();
            if right >= 2 { labels[i] } else { pred[2][i] }
        })
        .collect();
    ExitScores { confidence: Confidence::MaxSoftmax, conf, pred, labels, ensemble: Some(ensemble) }
}
