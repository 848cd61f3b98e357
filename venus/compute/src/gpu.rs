//! The Vulkan side: one compute pipeline, three host-visible storage buffers (under Venus these
//! are blob resources mapped into the guest), `reps` dispatches per submission, a fence per round.

use anyhow::{Context, anyhow};
use ash::vk;
use std::ffi::CStr;
use std::time::Instant;

pub struct Run {
    pub device: String,
    pub driver_id: String,
    pub seconds: f64,
    pub product: Vec<f32>,
}

const SHADER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/matmul.spv"));
const WORKGROUP: u32 = 16;

/// Releases Vulkan objects in reverse order of creation, on every exit path.
struct Cleanup(Vec<Box<dyn FnOnce()>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some(f) = self.0.pop() {
            f();
        }
    }
}

fn driver_id_name(id: vk::DriverId) -> String {
    // ash's Debug prints the enum's Vulkan name without the DRIVER_ID_ prefix.
    format!("DRIVER_ID_{id:?}")
}

pub fn run(
    want: &str,
    a: &[f32],
    b: &[f32],
    n: u32,
    reps: u32,
    rounds: u32,
) -> anyhow::Result<Run> {
    // SAFETY: loading the system's Vulkan loader library; nothing else runs its code concurrently.
    let entry =
        unsafe { ash::Entry::load() }.context("cannot load the Vulkan loader (libvulkan.so.1)")?;
    let app = vk::ApplicationInfo::default()
        .application_name(c"carbon-vk-compute")
        .api_version(vk::API_VERSION_1_2);
    // SAFETY: the create info and the application info it points to outlive the call.
    let instance = unsafe {
        entry.create_instance(
            &vk::InstanceCreateInfo::default().application_info(&app),
            None,
        )
    }
    .context("vkCreateInstance")?;
    let mut cleanup = Cleanup(Vec::new());
    {
        let i = instance.clone();
        // SAFETY: every object made from the instance is destroyed before (pushed after) this.
        cleanup
            .0
            .push(Box::new(move || unsafe { i.destroy_instance(None) }));
    }

    // SAFETY: a valid instance.
    let physicals = unsafe { instance.enumerate_physical_devices() }?;
    let described: Vec<(vk::PhysicalDevice, String, String)> = physicals
        .iter()
        .map(|&pd| {
            let mut driver = vk::PhysicalDeviceDriverProperties::default();
            let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut driver);
            // SAFETY: pd comes from this instance; the chain lives across the call.
            unsafe { instance.get_physical_device_properties2(pd, &mut props) };
            // SAFETY: Vulkan writes a NUL-terminated name into the fixed array.
            let name = unsafe { CStr::from_ptr(props.properties.device_name.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            (pd, name, driver_id_name(driver.driver_id))
        })
        .collect();
    let venus = "DRIVER_ID_MESA_VENUS";
    let chosen = match want {
        "any" => described
            .iter()
            .find(|d| d.2 == venus)
            .or_else(|| described.first()),
        id => described.iter().find(|d| d.2 == id),
    }
    .ok_or_else(|| {
        let seen: Vec<String> = described
            .iter()
            .map(|d| format!("{} ({})", d.1, d.2))
            .collect();
        anyhow!(
            "no Vulkan device with driver {want}; devices: [{}]",
            seen.join(", ")
        )
    })?;
    let (pd, device_name, driver_id) = chosen.clone();

    // SAFETY: pd is valid.
    let queue_family = unsafe { instance.get_physical_device_queue_family_properties(pd) }
        .iter()
        .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
        .ok_or_else(|| anyhow!("{device_name} has no compute queue"))?
        as u32;
    let priorities = [1.0];
    let queue_info = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(queue_family)
        .queue_priorities(&priorities)];
    // SAFETY: create infos outlive the call.
    let device = unsafe {
        instance.create_device(
            pd,
            &vk::DeviceCreateInfo::default().queue_create_infos(&queue_info),
            None,
        )
    }
    .context("vkCreateDevice")?;
    {
        let d = device.clone();
        // SAFETY: waits for idle first; children are destroyed before (pushed after) this.
        cleanup.0.push(Box::new(move || unsafe {
            let _ = d.device_wait_idle();
            d.destroy_device(None)
        }));
    }
    // SAFETY: the family and index exist (one queue requested).
    let queue = unsafe { device.get_device_queue(queue_family, 0) };

    // Buffers: A, B (read) and C (written), host-visible and coherent.
    // SAFETY: pd is valid.
    let mem_props = unsafe { instance.get_physical_device_memory_properties(pd) };
    let bytes = (n as usize * n as usize * 4) as u64;
    let mut buffers = Vec::new();
    for data in [Some(a), Some(b), None] {
        // SAFETY: sizes and usage are valid; each buffer is bound once to its own memory.
        let (buf, mem, ptr) = unsafe {
            let buf = device.create_buffer(
                &vk::BufferCreateInfo::default()
                    .size(bytes)
                    .usage(vk::BufferUsageFlags::STORAGE_BUFFER),
                None,
            )?;
            let req = device.get_buffer_memory_requirements(buf);
            let wanted =
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
            let ty = (0..mem_props.memory_type_count)
                .find(|&i| {
                    req.memory_type_bits & (1 << i) != 0
                        && mem_props.memory_types[i as usize]
                            .property_flags
                            .contains(wanted)
                })
                .ok_or_else(|| anyhow!("{device_name} has no host-visible coherent memory"))?;
            let mem = device.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(req.size)
                    .memory_type_index(ty),
                None,
            )?;
            device.bind_buffer_memory(buf, mem, 0)?;
            let ptr = device.map_memory(mem, 0, bytes, vk::MemoryMapFlags::empty())? as *mut f32;
            (buf, mem, ptr)
        };
        if let Some(src) = data {
            // SAFETY: the mapping is `bytes` long, exactly n*n floats, and nothing else writes it.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr, src.len()) };
        }
        let d = device.clone();
        // SAFETY: every round ends with a fence wait, so no work uses the buffer when cleanup
        // runs; the mapping goes with the memory.
        cleanup.0.push(Box::new(move || unsafe {
            d.destroy_buffer(buf, None);
            d.free_memory(mem, None);
        }));
        buffers.push((buf, ptr));
    }

    // SAFETY (block): plain object creation from valid create infos that outlive each call;
    // everything made here is destroyed by `cleanup` after the last fence wait.
    unsafe {
        let bindings: Vec<_> = (0..3)
            .map(|i| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(i)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let set_layout = device.create_descriptor_set_layout(
            &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
            None,
        )?;
        let push = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .size(4)];
        let layouts = [set_layout];
        let layout = device.create_pipeline_layout(
            &vk::PipelineLayoutCreateInfo::default()
                .set_layouts(&layouts)
                .push_constant_ranges(&push),
            None,
        )?;
        let code = ash::util::read_spv(&mut std::io::Cursor::new(SHADER))?;
        let module = device
            .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main");
        let pipeline = device
            .create_compute_pipelines(
                vk::PipelineCache::null(),
                &[vk::ComputePipelineCreateInfo::default()
                    .stage(stage)
                    .layout(layout)],
                None,
            )
            .map_err(|(_, e)| e)
            .context("vkCreateComputePipelines")?[0];
        let sizes = [vk::DescriptorPoolSize::default()
            .ty(vk::DescriptorType::STORAGE_BUFFER)
            .descriptor_count(3)];
        let pool = device.create_descriptor_pool(
            &vk::DescriptorPoolCreateInfo::default()
                .max_sets(1)
                .pool_sizes(&sizes),
            None,
        )?;
        let set = device.allocate_descriptor_sets(
            &vk::DescriptorSetAllocateInfo::default()
                .descriptor_pool(pool)
                .set_layouts(&layouts),
        )?[0];
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = buffers
            .iter()
            .map(|&(buf, _)| {
                [vk::DescriptorBufferInfo::default()
                    .buffer(buf)
                    .range(vk::WHOLE_SIZE)]
            })
            .collect();
        let writes: Vec<_> = infos
            .iter()
            .enumerate()
            .map(|(i, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(i as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        device.update_descriptor_sets(&writes, &[]);
        let cmd_pool = device.create_command_pool(
            &vk::CommandPoolCreateInfo::default().queue_family_index(queue_family),
            None,
        )?;
        let cmd = device.allocate_command_buffers(
            &vk::CommandBufferAllocateInfo::default()
                .command_pool(cmd_pool)
                .level(vk::CommandBufferLevel::PRIMARY)
                .command_buffer_count(1),
        )?[0];
        let fence = device.create_fence(&vk::FenceCreateInfo::default(), None)?;
        let d = device.clone();
        cleanup.0.push(Box::new(move || {
            d.destroy_fence(fence, None);
            d.destroy_command_pool(cmd_pool, None);
            d.destroy_descriptor_pool(pool, None);
            d.destroy_pipeline(pipeline, None);
            d.destroy_shader_module(module, None);
            d.destroy_pipeline_layout(layout, None);
            d.destroy_descriptor_set_layout(set_layout, None);
        }));

        device.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())?;
        device.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
        device.cmd_bind_descriptor_sets(
            cmd,
            vk::PipelineBindPoint::COMPUTE,
            layout,
            0,
            &[set],
            &[],
        );
        device.cmd_push_constants(
            cmd,
            layout,
            vk::ShaderStageFlags::COMPUTE,
            0,
            &n.to_le_bytes(),
        );
        let groups = n.div_ceil(WORKGROUP);
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::SHADER_WRITE)];
        for _ in 0..reps {
            device.cmd_dispatch(cmd, groups, groups, 1);
            device.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            );
        }
        // The host reads C after the last round.
        let to_host = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)];
        device.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::PipelineStageFlags::HOST,
            vk::DependencyFlags::empty(),
            &to_host,
            &[],
            &[],
        );
        device.end_command_buffer(cmd)?;

        let cmds = [cmd];
        let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
        let mut best = f64::INFINITY;
        for _ in 0..rounds {
            let t = Instant::now();
            device.queue_submit(queue, &submit, fence)?;
            device.wait_for_fences(&[fence], true, u64::MAX)?;
            best = best.min(t.elapsed().as_secs_f64());
            device.reset_fences(&[fence])?;
        }
        let c = buffers[2].1;
        let product = std::slice::from_raw_parts(c, (n * n) as usize).to_vec();
        Ok(Run {
            device: device_name,
            driver_id,
            seconds: best,
            product,
        })
    }
}
