# init: the stack's glue alone (wasmlet-compose init and setup), FROM scratch;
# built by hack/compose/build.sh.
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/bin/wasmlet-compose"]
