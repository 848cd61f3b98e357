//! Off Linux the stand-in has no VMM to run: on a Mac, krunkit itself is there.

use crate::Event;
use crate::devices::Attached;
use std::sync::mpsc::Sender;

pub const MAC_PAGE: u64 = 16384;

pub struct Vm;

impl Vm {
    pub fn power_button(&self) -> Result<(), String> {
        Ok(())
    }

    pub fn kill(&self) {}
}

pub fn boot(_: Attached, _: &[String], _: u8, _: u32, _: Sender<Event>) -> Result<Vm, String> {
    Err("the krunkit stand-in runs VMs on Linux only (on a Mac, use krunkit)".into())
}
