// C = A x B for n x n row-major matrices: 2 n^3 floating-point operations per dispatch.
struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
var<push_constant> p: Params;

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = p.n;
    if id.x >= n || id.y >= n {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < n; k++) {
        acc += a[id.y * n + k] * b[k * n + id.x];
    }
    c[id.y * n + id.x] = acc;
}
