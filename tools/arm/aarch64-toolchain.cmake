# CMake toolchain for cross-compiling to 64-bit ARM Linux (Raspberry Pi 4/5, Jetson) with Debian's
# g++-aarch64-linux-gnu. Programs built with it run on x86 under qemu-user:
#     qemu-aarch64 -L /usr/aarch64-linux-gnu ./program
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(GLASS_AARCH64_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER   ${GLASS_AARCH64_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${GLASS_AARCH64_TRIPLE}-g++)

# Look for headers and libraries only in the aarch64 sysroot, for programs only on the host.
set(CMAKE_FIND_ROOT_PATH /usr/${GLASS_AARCH64_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# try_run() and ctest run aarch64 binaries through qemu.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/${GLASS_AARCH64_TRIPLE})
