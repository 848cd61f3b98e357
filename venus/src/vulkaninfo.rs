//! `vulkaninfo --summary`: the Vulkan devices a host, guest or container sees.

use serde::Serialize;

/// One `GPUn:` block of the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub name: String,
    /// e.g. `DRIVER_ID_MESA_VENUS`, `DRIVER_ID_MESA_LLVMPIPE`; a vulkaninfo older than the
    /// driver says `UNKNOWN_VkDriverId`.
    pub driver_id: String,
    /// The driver's own name, e.g. `venus`, `llvmpipe`.
    pub driver_name: String,
    pub device_type: String,
    pub api_version: String,
    /// e.g. `Mesa 25.0.7-2`.
    pub driver_info: String,
}

pub const VENUS: &str = "DRIVER_ID_MESA_VENUS";
pub const LLVMPIPE: &str = "DRIVER_ID_MESA_LLVMPIPE";

impl Device {
    /// Venus by its driver ID, or by its name where vulkaninfo is too old to know the ID (Debian
    /// 11's 1.2.162 lists Venus as `UNKNOWN_VkDriverId`, driver name `venus`).
    pub fn is_venus(&self) -> bool {
        self.driver_id == VENUS || self.driver_name == "venus"
    }

    /// The host device behind Venus: the part of `Virtio-GPU Venus (HOST)` in parentheses.
    pub fn host_device(&self) -> Option<&str> {
        self.name
            .strip_prefix("Virtio-GPU Venus (")?
            .strip_suffix(')')
    }
}

/// The devices of a summary, in order. Text that is not a summary gives no devices.
pub fn parse_summary(text: &str) -> Vec<Device> {
    let mut devices = Vec::new();
    let mut in_devices = false;
    let mut current: Option<Device> = None;
    for line in text.lines() {
        let t = line.trim();
        if t == "Devices:" {
            in_devices = true;
            continue;
        }
        if !in_devices {
            continue;
        }
        if t.starts_with("GPU") && t.ends_with(':') {
            devices.extend(current.take());
            current = Some(Device {
                name: String::new(),
                driver_id: String::new(),
                driver_name: String::new(),
                device_type: String::new(),
                api_version: String::new(),
                driver_info: String::new(),
            });
            continue;
        }
        let (Some(d), Some((key, value))) = (current.as_mut(), t.split_once('=')) else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "deviceName" => d.name = value,
            "driverID" => d.driver_id = value,
            "driverName" => d.driver_name = value,
            "deviceType" => d.device_type = value,
            "apiVersion" => d.api_version = value,
            "driverInfo" => d.driver_info = value,
            _ => {}
        }
    }
    devices.extend(current);
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lavapipe_is_one_cpu_device() {
        let d = parse_summary(include_str!("../tests/data/summary-host-lavapipe.txt"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].driver_id, LLVMPIPE);
        assert!(d[0].name.starts_with("llvmpipe (LLVM"), "{}", d[0].name);
        assert_eq!(d[0].device_type, "PHYSICAL_DEVICE_TYPE_CPU");
        assert!(d[0].driver_info.starts_with("Mesa 25."));
        assert!(!d[0].is_venus() && d[0].host_device().is_none());
    }

    #[test]
    fn guest_sees_venus_and_its_own_lavapipe() {
        let d = parse_summary(include_str!("../tests/data/summary-guest-venus.txt"));
        let venus: Vec<_> = d.iter().filter(|d| d.is_venus()).collect();
        assert_eq!(venus.len(), 1, "{d:?}");
        assert!(venus[0].host_device().unwrap().starts_with("llvmpipe"));
        assert!(d.iter().any(|d| d.driver_id == LLVMPIPE));
    }

    #[test]
    fn an_old_vulkaninfo_names_venus_only_by_its_driver_name() {
        let d = parse_summary(include_str!("../tests/data/summary-bullseye-venus.txt"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].driver_id, "UNKNOWN_VkDriverId");
        assert!(d[0].is_venus(), "{d:?}");
        assert!(d[0].host_device().unwrap().starts_with("llvmpipe"));
    }

    #[test]
    fn errors_and_empty_output_have_no_devices() {
        assert!(parse_summary("").is_empty());
        assert!(parse_summary("ERROR: [Loader Message] vkCreateInstance failed\n").is_empty());
    }
}
