# kube-controller-manager: built FROM scratch by hack/compose/build.sh, whose staging directory
# is the build context (rootfs/ is the layer every image of the stack shares).
FROM scratch
COPY rootfs/ /
COPY kube-controller-manager /bin/kube-controller-manager
ENTRYPOINT ["/bin/kube-controller-manager"]
