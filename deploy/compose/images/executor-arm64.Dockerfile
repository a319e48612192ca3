# executor-arm64: the executor built for linux/arm64, run on any host by
# qemu-aarch64-static (user-mode emulation, no binfmt needed), FROM scratch;
# built by hack/compose/build.sh. The glue in rootfs/ stays native.
FROM scratch
COPY rootfs/ /
COPY qemu-aarch64-static /bin/qemu-aarch64-static
COPY executor /bin/executor
ENTRYPOINT ["/bin/qemu-aarch64-static", "/bin/executor"]
