//! The default image boots by direct kernel boot under QEMU (TCG: no usable KVM here) from its own
//! kernel, initrd and command line, and the guest's carbon-ready unit says `Ready` on the
//! virtio-serial port `carbon.ready`, with its SSH host key for the host to pin. This is the
//! image alone, without carbon-vm's machine layer.

mod common;

use common::boot::{self, Boot};
use std::time::Duration;

#[test]
fn default_image_boots_to_ready_under_qemu() {
    let Some(image) = common::default_image() else {
        return;
    };
    let env = common::Env::new();
    let sha = common::sha256_file(&image);
    let v = env.pull(image.to_str().unwrap(), Some(&sha));
    let booted = boot::to_ready(
        v["disk"].as_str().unwrap(),
        Boot::Direct {
            kernel: v["kernel"].as_str().unwrap(),
            initrd: v["initrd"].as_str().unwrap(),
            cmdline: v["cmdline"].as_str().unwrap(),
        },
        Duration::from_secs(600),
    );
    booted.assert_ready();
}
