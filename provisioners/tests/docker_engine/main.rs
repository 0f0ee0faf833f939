//! Integration tests of the container, volume and network provisioners on
//! the real Docker engine, with the image tests/images/build.sh builds.
//! Each test uses its own reservation ids and subnets and cleans up its
//! Docker objects and mounts through `common::Guard`, also on failure.

mod common;
mod container;
mod images;
mod network;
mod runs;
mod volume;
