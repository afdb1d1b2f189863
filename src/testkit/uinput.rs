//! A virtual absolute pointer (like QEMU's usb-tablet) through /dev/uinput, to drive libinput
//! with exact positions.

use std::fs::File;
use std::io::Write;

use rustix::ioctl::{ioctl, opcode, IntegerSetter, NoArg, Setter};

use super::{Context, KitError};

const EV_SYN: u16 = 0;
const EV_KEY: u16 = 1;
const EV_ABS: u16 = 3;
const BTN_LEFT: u16 = 0x110;
const ABS_X: u16 = 0;
const ABS_Y: u16 = 1;

#[repr(C)]
struct InputId {
    bustype: u16,
    vendor: u16,
    product: u16,
    version: u16,
}

#[repr(C)]
struct UinputSetup {
    id: InputId,
    name: [u8; 80],
    ff_effects_max: u32,
}

#[repr(C)]
struct InputAbsinfo {
    value: i32,
    minimum: i32,
    maximum: i32,
    fuzz: i32,
    flat: i32,
    resolution: i32,
}

#[repr(C)]
struct UinputAbsSetup {
    code: u16,
    _pad: u16,
    absinfo: InputAbsinfo,
}

const UI_SET_EVBIT: rustix::ioctl::Opcode = opcode::write::<i32>(b'U', 100);
const UI_SET_KEYBIT: rustix::ioctl::Opcode = opcode::write::<i32>(b'U', 101);
const UI_SET_ABSBIT: rustix::ioctl::Opcode = opcode::write::<i32>(b'U', 103);
const UI_DEV_SETUP: rustix::ioctl::Opcode = opcode::write::<UinputSetup>(b'U', 3);
const UI_ABS_SETUP: rustix::ioctl::Opcode = opcode::write::<UinputAbsSetup>(b'U', 4);
const UI_DEV_CREATE: rustix::ioctl::Opcode = opcode::none(b'U', 1);

/// An absolute pointer whose range is `width` x `height`, so positions map 1:1 onto an output
/// of that size.
pub struct Tablet {
    file: File,
}

impl Tablet {
    /// A tablet with this absolute range.
    pub fn new(width: i32, height: i32) -> Result<Tablet, KitError> {
        let file = std::fs::OpenOptions::new().write(true).open("/dev/uinput").context("open /dev/uinput (modprobe uinput)")?;
        // SAFETY (all ioctls below): uinput's setup ioctls with their exact argument types.
        unsafe {
            ioctl(&file, IntegerSetter::<UI_SET_EVBIT>::new_usize(EV_KEY as usize)).context("UI_SET_EVBIT key")?;
            ioctl(&file, IntegerSetter::<UI_SET_EVBIT>::new_usize(EV_ABS as usize)).context("UI_SET_EVBIT abs")?;
            ioctl(&file, IntegerSetter::<UI_SET_KEYBIT>::new_usize(BTN_LEFT as usize)).context("UI_SET_KEYBIT")?;
            ioctl(&file, IntegerSetter::<UI_SET_ABSBIT>::new_usize(ABS_X as usize)).context("UI_SET_ABSBIT x")?;
            ioctl(&file, IntegerSetter::<UI_SET_ABSBIT>::new_usize(ABS_Y as usize)).context("UI_SET_ABSBIT y")?;
            for (code, max) in [(ABS_X, width - 1), (ABS_Y, height - 1)] {
                let setup = UinputAbsSetup {
                    code,
                    _pad: 0,
                    absinfo: InputAbsinfo { value: 0, minimum: 0, maximum: max, fuzz: 0, flat: 0, resolution: 0 },
                };
                ioctl(&file, Setter::<UI_ABS_SETUP, UinputAbsSetup>::new(setup)).context("UI_ABS_SETUP")?;
            }
            let mut name = [0u8; 80];
            name[..13].copy_from_slice(b"cohere-tablet");
            let setup = UinputSetup { id: InputId { bustype: 0x06, vendor: 0x1234, product: 0x5678, version: 1 }, name, ff_effects_max: 0 };
            ioctl(&file, Setter::<UI_DEV_SETUP, UinputSetup>::new(setup)).context("UI_DEV_SETUP")?;
            ioctl(&file, NoArg::<UI_DEV_CREATE>::new()).context("UI_DEV_CREATE")?;
        }
        Ok(Tablet { file })
    }

    fn emit(&mut self, kind: u16, code: u16, value: i32) -> Result<(), KitError> {
        let mut ev = [0u8; 24];
        ev[16..18].copy_from_slice(&kind.to_ne_bytes());
        ev[18..20].copy_from_slice(&code.to_ne_bytes());
        ev[20..24].copy_from_slice(&value.to_ne_bytes());
        self.file.write_all(&ev).context("writing an input event")
    }

    /// Moves the pointer to (x, y): libinput maps the axes 1:1 onto an output of the tablet's size.
    pub fn move_to(&mut self, x: i32, y: i32) -> Result<(), KitError> {
        self.emit(EV_ABS, ABS_X, x)?;
        self.emit(EV_ABS, ABS_Y, y)?;
        self.emit(EV_SYN, 0, 0)
    }

    /// Moves to (x, y) and clicks the left button there.
    pub fn click(&mut self, x: i32, y: i32) -> Result<(), KitError> {
        self.move_to(x, y)?;
        std::thread::sleep(std::time::Duration::from_millis(30));
        self.emit(EV_KEY, BTN_LEFT, 1)?;
        self.emit(EV_SYN, 0, 0)?;
        std::thread::sleep(std::time::Duration::from_millis(30));
        self.emit(EV_KEY, BTN_LEFT, 0)?;
        self.emit(EV_SYN, 0, 0)
    }
}
