//! carbon-vk-compute: multiplies two n x n matrices on a Vulkan device, checks the product against
//! the CPU, and reports the device's throughput. It is carbon-vm's end-to-end GPU workload: run in
//! a container on a `--gpu` machine it exercises Venus for real (host-visible blob memory, command
//! submission, fences), and run on the host it gives the baseline the benchmark compares with.

mod gpu;

use clap::Parser;
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Vulkan compute check and benchmark (matrix product verified on the CPU)")]
struct Args {
    /// Matrix size (n x n).
    #[arg(long, default_value_t = 256)]
    n: u32,
    /// Dispatches per submission: large enough that the submission round trip is noise.
    #[arg(long, default_value_t = 4)]
    reps: u32,
    /// Timed submissions (the best is reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Which device: a driverID such as DRIVER_ID_MESA_VENUS, or `any` (Venus first, else the first).
    #[arg(long, default_value = "any")]
    driver: String,
}

#[derive(Serialize)]
struct Report {
    device: String,
    driver_id: String,
    n: u32,
    reps: u32,
    /// The best round's seconds for `reps` dispatches.
    seconds: f64,
    gflops: f64,
    max_abs_error: f32,
    verified: bool,
}

/// Deterministic inputs in [-1, 1): the same on every run and every device.
fn inputs(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed;
    (0..n * n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn cpu_matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0f32; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            let (row, brow) = (&mut c[i * n..(i + 1) * n], &b[k * n..(k + 1) * n]);
            for (cj, bj) in row.iter_mut().zip(brow) {
                *cj += aik * bj;
            }
        }
    }
    c
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.n >= 16 && args.reps >= 1 && args.rounds >= 1,
        "n >= 16, reps and rounds >= 1"
    );
    let n = args.n as usize;
    let (a, b) = (inputs(n, 1), inputs(n, 2));
    let run = gpu::run(&args.driver, &a, &b, args.n, args.reps, args.rounds)?;
    let expected = cpu_matmul(&a, &b, n);
    let max_abs_error = run
        .product
        .iter()
        .zip(&expected)
        .map(|(g, c)| (g - c).abs())
        .fold(0f32, f32::max);
    // Sums of n products of values below 1 in magnitude: float rounding stays far below 1e-2.
    let verified = max_abs_error < 1e-2;
    let report = Report {
        device: run.device,
        driver_id: run.driver_id,
        n: args.n,
        reps: args.reps,
        seconds: run.seconds,
        gflops: 2.0 * (n as f64).powi(3) * args.reps as f64 / run.seconds / 1e9,
        max_abs_error,
        verified,
    };
    println!("{}", serde_json::to_string(&report)?);
    anyhow::ensure!(
        verified,
        "the device's product differs from the CPU's by {max_abs_error}"
    );
    Ok(())
}
