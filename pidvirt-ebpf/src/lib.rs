#![no_std]
// The library target exists so that pidvirt-user can declare a build-dependency on this crate.
