# Homebrew formula for a tap (Homebrew installs formulae from taps only; docs/macos.md puts it in
# a local one, `brew tap-new local/carbon-vm`). Its
# placeholders (names between at signs) are filled by `scripts/build-macos release VERSION`, which
# writes the formula for that release as dist/carbon-vm.rb (a release asset): copy that into the tap.
class CarbonVm < Formula
  desc "GPU-accelerated (virtio-gpu Venus) Podman machines"
  homepage "@HOMEPAGE@"
  version "@VERSION@"
  license "Apache-2.0"

  on_arm do
    url "@URL_BASE@/carbon-vm-@VERSION@-aarch64-apple-darwin.tar.gz"
    sha256 "@SHA256_AARCH64@"
  end
  on_intel do
    url "@URL_BASE@/carbon-vm-@VERSION@-x86_64-apple-darwin.tar.gz"
    sha256 "@SHA256_X86_64@"
  end

  depends_on :macos
  depends_on "gvproxy"
  # krunkit (libkrun) runs on Apple Silicon only: on an Intel Mac carbon-vm has no VMM, and only
  # its image verbs (pull, verify, push, ls) are of use.
  on_arm do
    depends_on "slp/krun/krunkit"
  end

  def install
    bin.install "carbon-vm"
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/carbon-vm --version")
    # doctor exits 6 while anything it checks is missing, and on a Mac the image build tools
    # (mmdebstrap, mkfs.ext4, mtools) always are: what counts here is that it runs, reports as
    # JSON, and finds the krunkit this formula depends on.
    output = Utils.popen_read(bin/"carbon-vm", "--json", "doctor")
    assert_includes [0, 6], $CHILD_STATUS.exitstatus
    checks = JSON.parse(output)["checks"]
    refute_empty checks
    if Hardware::CPU.arm?
      krunkit = checks.find { |c| c["requirement"] == "krunkit" }
      assert krunkit["ok"], krunkit["found"]
    end
  end
end
