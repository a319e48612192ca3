# executor: the executor with wasmtime only (static, cgo), built FROM
# scratch by hack/compose/build.sh, whose staging directory is the build
# context (rootfs/ is the layer every image of the stack shares).
FROM scratch
COPY rootfs/ /
COPY executor /bin/executor
ENTRYPOINT ["/bin/executor"]
