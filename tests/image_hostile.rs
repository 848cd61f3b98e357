//! Hostile artifacts the pull pipeline must refuse, each with the exact check named, the exit code
//! of its class, no raw control character on the terminal, and the cache as it was: tar
//! extensions that disagree with the header, names the cache uses, control characters, Venus
//! bundles that are not files, partition tables that do not fit their disk, and disks too small.

mod common;

use common::Env;
use common::archive::{self, Entry, boot_members, entries, manifest, tar_bytes, zstd_bytes};
use common::tmpfs::Tmpfs;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Pulls `art` pinned to its own sha256 and expects exit `code`, every `needle` in stderr, no
/// ESC byte in it, and an untouched cache.
fn refused(env: &Env, art: &Path, code: i32, needles: &[&str]) -> String {
    let pin = common::sha256_file(art);
    refused_from(env, art.to_str().unwrap(), &pin, code, needles)
}

/// `refused` for any source, pinned to `pin`.
fn refused_from(env: &Env, source: &str, pin: &str, code: i32, needles: &[&str]) -> String {
    let before = env.cache_listing();
    let out = env
        .cmd()
        .args(["image", "pull", source, "--sha256", pin])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{source}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{source}: expected {needle:?} in:\n{stderr}"
        );
    }
    assert!(
        !out.stderr.contains(&0x1b),
        "raw ESC on the terminal: {stderr:?}"
    );
    assert_eq!(env.cache_listing(), before, "{source}: cache changed");
    stderr
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn tar_extensions_are_what_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new();
    let members = boot_members();
    // The manifest pins disk.raw at its header size but with the digest of what pax streams.
    let streamed = vec![0x55; 8192];
    let mut m = manifest(&members);
    m["members"][2]["sha256"] = archive::sha256(&streamed).into();
    let mut e = entries(&m, &members[..2]);
    e.push(Entry::pax(&[("size", b"8192")]));
    e.push(Entry {
        header_size: Some(4096),
        ..Entry::file("disk.raw", &streamed)
    });
    let art = write(dir.path(), "pax-size.tar.zst", &zstd_bytes(&tar_bytes(&e)));
    refused(
        &env,
        &art,
        4,
        &["member \"disk.raw\" is 8192 bytes, the manifest says 4096"],
    );

    // A pax path and a GNU long name override the header's name, and are what is checked.
    let good = manifest(&members);
    let renamed = |ext: Entry| {
        let mut e = entries(&good, &members);
        e.insert(3, ext);
        zstd_bytes(&tar_bytes(&e))
    };
    let art = write(
        dir.path(),
        "pax-path.tar.zst",
        &renamed(Entry::pax(&[("path", b"../../etc/cron.d/x")])),
    );
    refused(
        &env,
        &art,
        4,
        &["\"../../etc/cron.d/x\" is not a plain relative path"],
    );
    let art = write(
        dir.path(),
        "long-name.tar.zst",
        &renamed(Entry::gnu_long_name(b"boot/../../evil")),
    );
    refused(
        &env,
        &art,
        4,
        &["\"boot/../../evil\" is not a plain relative path"],
    );
    let art = write(
        dir.path(),
        "pax-nul.tar.zst",
        &renamed(Entry::pax(&[("path", b"disk.raw\0evil")])),
    );
    refused(
        &env,
        &art,
        4,
        &["\"disk.raw\\0evil\" is not a plain relative path"],
    );

    // Extension headers are buffered by the tar reader: a huge one is refused, not held.
    let huge = vec![b'a'; 256 * 1024];
    let art = write(
        dir.path(),
        "huge-pax.tar.zst",
        &renamed(Entry::pax(&[("comment", &huge)])),
    );
    refused(
        &env,
        &art,
        4,
        &["tar headers (pax records, long names) exceed 65536 bytes"],
    );

    // GNU sparse members are refused outright.
    let mut e = entries(&good, &members[..2]);
    e.push(Entry {
        // The GNU header's real size (offset 483): an empty sparse map of an empty file.
        patch: Some((483, b"00000000000\0".to_vec())),
        ..Entry::special("disk.raw", tar::EntryType::GNUSparse, None)
    });
    let art = write(dir.path(), "sparse.tar.zst", &zstd_bytes(&tar_bytes(&e)));
    refused(&env, &art, 4, &["\"disk.raw\" is a GNU sparse file"]);

    // An uncompressed stream that ends inside a member: the bytes read, not the header, count.
    let whole = tar_bytes(&entries(&good, &members));
    let disk_data = whole.len() - 1024 - 4096;
    let art = write(dir.path(), "short.tar", &whole[..disk_data + 1000]);
    refused(
        &env,
        &art,
        4,
        &["member \"disk.raw\" is 1000 bytes, the manifest says 4096"],
    );

    // A size in GNU base-256 far beyond the manifest's.
    let mut e = entries(&good, &members);
    let mut giant = [0u8; 12];
    giant[0] = 0x80;
    giant[4] = 0x7f;
    e[3].patch = Some((124, giant.to_vec()));
    let art = write(dir.path(), "giant.tar.zst", &zstd_bytes(&tar_bytes(&e)));
    refused(
        &env,
        &art,
        4,
        &["member \"disk.raw\" is 9151314442816847872 bytes, the manifest says 4096"],
    );
}

#[test]
fn names_the_cache_uses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new();
    for name in ["image.json", "Image.JSON", "image.json/record"] {
        let mut members = boot_members();
        members.push((name.into(), b"{\"id\": \"forged\"}".to_vec()));
        let e = entries(&manifest(&members), &members);
        let art = write(dir.path(), "reserved.tar.zst", &zstd_bytes(&tar_bytes(&e)));
        refused(
            &env,
            &art,
            4,
            &[&format!(
                "member path {name:?} is a name the image cache uses for itself"
            )],
        );
    }
    // Names that differ only by case would land on one file on macOS.
    let mut members = boot_members();
    members.push(("Disk.raw".into(), b"other".to_vec()));
    let e = entries(&manifest(&members), &members);
    let art = write(dir.path(), "case.tar.zst", &zstd_bytes(&tar_bytes(&e)));
    refused(&env, &art, 4, &["member \"Disk.raw\" is listed twice"]);
}

#[test]
fn control_characters_never_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new();
    let members = boot_members();
    let good = manifest(&members);

    let mut e = entries(&good, &members);
    e.push(Entry::file("\u{1b}[2J\u{1b}]0;owned\u{7}", b"x"));
    let art = write(dir.path(), "esc-name.tar.zst", &zstd_bytes(&tar_bytes(&e)));
    refused(
        &env,
        &art,
        4,
        &["\"\\u{1b}[2J\\u{1b}]0;owned\\u{7}\" is not a plain"],
    );

    // The tar reader quotes a malformed header field in its error.
    let mut e = entries(&good, &members);
    e[1].patch = Some((124, b"\x1b[2J\x1b[31m\0\0\0".to_vec()));
    let art = write(dir.path(), "esc-size.tar.zst", &zstd_bytes(&tar_bytes(&e)));
    let stderr = refused(&env, &art, 4, &["corrupt or truncated tar archive"]);
    assert!(
        stderr.contains("\\u{1b}[2J"),
        "escaped, not dropped: {stderr}"
    );

    // Manifest text is shown by `image ls`/`pull`: control characters are refused up front.
    let mut m = good.clone();
    m["bundles"]["mesa_version"] = "25.0\u{1b}]0;owned\u{7}".into();
    let art = write(
        dir.path(),
        "esc-manifest.tar.zst",
        &zstd_bytes(&tar_bytes(&entries(&m, &members))),
    );
    refused(
        &env,
        &art,
        4,
        &["manifest field bundles.mesa_version holds control characters"],
    );
    // So is a Venus path, which the bundle check would otherwise quote.
    let mut m = good;
    m["bundles"]["venus_icd"] = "/usr/share/vulkan/\u{1b}[31m.json".into();
    let art = write(
        dir.path(),
        "esc-icd.tar.zst",
        &zstd_bytes(&tar_bytes(&entries(&m, &members))),
    );
    refused(
        &env,
        &art,
        4,
        &["manifest field bundles.venus_icd holds control characters"],
    );
}

/// Rebuilds a packed artifact with its disk changed by `edit` and the manifest pinning the new
/// disk, so only the disk's content is hostile.
fn with_disk(art: &Path, out: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut parts = archive::read_artifact(art);
    let disk = parts.iter().position(|(n, _)| n == "disk.raw").unwrap();
    edit(&mut parts[disk].1);
    let mut m: Value = serde_json::from_slice(&parts[0].1).unwrap();
    for member in m["members"].as_array_mut().unwrap() {
        if member["path"] == "disk.raw" {
            member["sha256"] = archive::sha256(&parts[disk].1).into();
        }
    }
    parts[0].1 = serde_json::to_vec(&m).unwrap();
    let e: Vec<Entry> = parts.iter().map(|(n, d)| Entry::file(n, d)).collect();
    std::fs::write(out, zstd_bytes(&tar_bytes(&e))).unwrap();
    out.into()
}

/// CRC-32 (IEEE), as GPT checksums its header and entries.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

/// Re-checksums the primary GPT (header at LBA 1) after an edit, as a forger would.
fn reseal_gpt(d: &mut [u8]) {
    let (num, size) = (u32_at(d, 512 + 80) as usize, u32_at(d, 512 + 84) as usize);
    let table = crc32(&d[1024..1024 + num * size.min(128)]);
    d[512 + 88..512 + 92].copy_from_slice(&table.to_le_bytes());
    d[512 + 16..512 + 20].fill(0);
    let header = crc32(&d[512..512 + 92]);
    d[512 + 16..512 + 20].copy_from_slice(&header.to_le_bytes());
}

#[test]
fn partition_tables_must_fit_their_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (art, _) = common::pack_mini(dir.path());
    let env = Env::new();

    // The root partition (entry 2) ends past the disk.
    let past_end = with_disk(&art, &dir.path().join("past-end.tar.zst"), |d| {
        let sectors = d.len() as u64 / 512;
        let last = 1024 + 128 + 40;
        d[last..last + 8].copy_from_slice(&(sectors + 2048).to_le_bytes());
        reseal_gpt(d);
    });
    refused(
        &env,
        &past_end,
        4,
        &[
            "does not bundle a usable Venus driver",
            "GPT partition \"carbon-root\"",
            "lies outside the usable sectors",
        ],
    );

    // Entries of 256 bytes: the gpt crate would assert (panic) on them.
    let wide = with_disk(&art, &dir.path().join("wide.tar.zst"), |d| {
        d[512 + 84..512 + 88].copy_from_slice(&256u32.to_le_bytes());
        reseal_gpt(d);
    });
    refused(
        &env,
        &wide,
        4,
        &[
            "the primary GPT header does not describe this",
            "partition entries are not 128 bytes",
        ],
    );

    // A usable range that ends past the disk.
    let usable = with_disk(&art, &dir.path().join("usable.tar.zst"), |d| {
        d[512 + 48..512 + 56].copy_from_slice(&u64::MAX.to_le_bytes());
        reseal_gpt(d);
    });
    refused(
        &env,
        &usable,
        4,
        &["the usable sectors are not inside the disk"],
    );
}

#[test]
fn venus_bundle_members_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    archive::synthetic_rootfs(&root, true);
    // The library the ICD names is a directory: `exists()` says yes, the loader cannot load it.
    let lib = root.join("usr/lib/x86_64-linux-gnu/libvulkan_virtio.so");
    std::fs::remove_file(&lib).unwrap();
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(lib.join("not-a-library"), b"x").unwrap();
    let art = dir.path().join("dir-lib.tar.zst");
    Env::new()
        .cmd()
        .args(["image", "pack"])
        .arg(&root)
        .arg("-o")
        .arg(&art)
        .args(["--name", "dirlib"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .assert()
        .success();
    let env = Env::new();
    refused(
        &env,
        &art,
        4,
        &[
            "does not bundle a usable Venus driver",
            "which is not a regular file in the root filesystem",
        ],
    );

    // A manifest naming a directory as the ICD or the library is refused the same way.
    let (mini, _) = common::pack_mini(&dir.path().join("mini"));
    let mut parts = archive::read_artifact(&mini);
    let mut m: Value = serde_json::from_slice(&parts[0].1).unwrap();
    m["bundles"]["venus_library"] = "/usr/lib/x86_64-linux-gnu".into();
    parts[0].1 = serde_json::to_vec(&m).unwrap();
    let e: Vec<Entry> = parts.iter().map(|(n, d)| Entry::file(n, d)).collect();
    let art = write(
        dir.path(),
        "dir-declared.tar.zst",
        &zstd_bytes(&tar_bytes(&e)),
    );
    refused(
        &env,
        &art,
        4,
        &["the manifest's Venus library \"/usr/lib/x86_64-linux-gnu\" is not a regular file"],
    );
}

#[test]
fn a_pull_needs_the_space_and_a_lying_manifest_cannot_fill_the_disk() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The mini image's disk is tens of MiB (sparse), far more than the 8 MiB tmpfs.
    let (mini, _) = common::pack_mini(dir.path());
    {
        let env = fs.env();
        let stderr = refused(&env, &mini, 1, &["not enough space in", "bytes needed"]);
        assert!(stderr.contains("hint: free space"), "{stderr}");
        let scratch: Vec<_> = std::fs::read_dir(env.images_dir())
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
            .collect();
        assert!(scratch.is_empty(), "partial pull left: {scratch:?}");
    }

    // Declares a 4 KiB disk, streams 64 MiB of data (pax size), pinned by its true sha256.
    let env = fs.env();
    let members = boot_members();
    let streamed: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut m = manifest(&members);
    m["members"][2]["sha256"] = archive::sha256(&streamed).into();
    let mut e = entries(&m, &members[..2]);
    e.push(Entry::pax(&[(
        "size",
        (64u32 << 20).to_string().as_bytes(),
    )]));
    e.push(Entry {
        header_size: Some(4096),
        ..Entry::file("disk.raw", &streamed)
    });
    let art = write(dir.path(), "liar.tar.zst", &zstd_bytes(&tar_bytes(&e)));
    let before = fs.used();
    refused(
        &env,
        &art,
        4,
        &["member \"disk.raw\" is 67108864 bytes, the manifest says 4096"],
    );
    assert!(
        fs.used() < before + (1 << 20),
        "the refused pull wrote {} bytes",
        fs.used() - before
    );

    // Over HTTP, Content-Length says the artifact alone (uncompressed) is more than the disk
    // has: refused before its body is read.
    let plain = write(dir.path(), "liar.tar", &tar_bytes(&e));
    let web = common::servers::nginx(dir.path());
    let size = std::fs::metadata(&plain).unwrap().len();
    refused_from(
        &env,
        &format!("http://127.0.0.1:{}/liar.tar", web.port),
        &common::sha256_file(&plain),
        1,
        &["not enough space in", &format!(": {size} bytes needed")],
    );
}
