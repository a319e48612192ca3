# registry: the OCI registry (CNCF distribution, static build), FROM scratch;
# built by hack/compose/build.sh.
FROM scratch
COPY rootfs/ /
COPY registry /bin/registry
COPY registry.yml /etc/distribution/config.yml
ENTRYPOINT ["/bin/registry"]
CMD ["serve", "/etc/distribution/config.yml"]
