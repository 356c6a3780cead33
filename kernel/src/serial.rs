//! The console: COM1 (16550 UART at port 0x3f8), 115200 8N1, polled. Every line the host side
//! parses is printed here.

use core::fmt::{self, Write};

use crate::port::{inb, outb};

const COM1: u16 = 0x3f8;

/// The console lock: one line is not interleaved with another (an exception handler that
/// finds it held prints anyway, see [`force_print`]).
static CONSOLE: spin::Mutex<Serial> = spin::Mutex::new(Serial);

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

fn put(b: u8) {
    // Line status bit 5: the transmit holding register is empty.
    while inb(COM1 + 5) & 0x20 == 0 {}
    outb(COM1, b);
}

/// Programs the UART: interrupts off, divisor 1 (115200 baud), 8N1, FIFOs on.
pub fn init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x0b);
}

/// Prints to the console (the `print!`/`println!` macros).
pub fn print(args: fmt::Arguments) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Prints without taking the console lock: for the exception and panic paths, which may have
/// interrupted a print.
pub fn force_print(args: fmt::Arguments) {
    let _ = Serial.write_fmt(args);
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::print(format_args!($($arg)*)) };
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}
