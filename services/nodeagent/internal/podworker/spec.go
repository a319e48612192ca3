package podworker

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/internal/beneath"
	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// Labels the Worker puts on its instances, so that a restarted node agent
// can tell whose they are and which attempt each one is.
const (
	LabelNamespace    = "wasmlet.io/namespace"
	LabelPod          = "wasmlet.io/pod"
	LabelPodUID       = "wasmlet.io/pod-uid"
	LabelContainer    = "wasmlet.io/container"
	LabelRestartCount = "wasmlet.io/restart-count"
)

// specInput is what an instance spec is made from besides the pod.
type specInput struct {
	digest     string            // the module's
	env        [][2]string       // resolved, in order
	volumes    map[string]string // volume name -> host directory
	logSubject string
	restarts   int32 // the container's restart count: this attempt's number
}

// instanceID names attempt restarts of a container: IDs are derived from
// the pod, so that a create repeated by a restarted node agent finds the
// instance it made.
func instanceID(pod *v1.Pod, container string, restarts int32) string {
	return fmt.Sprintf("%s-%s-%d", pod.UID, container, restarts)
}

// instanceSpec is what an instance of container c runs. Its errors are the
// pod's configuration's (CreateContainerConfigError).
func instanceSpec(pod *v1.Pod, c *v1.Container, in specInput) (instances.Spec, error) {
	spec := instances.Spec{
		Module:     instances.Module{Digest: in.digest, Reference: c.Image},
		Args:       argv(c),
		LogSubject: in.logSubject,
		Labels: map[string]string{
			LabelNamespace: pod.Namespace, LabelPod: pod.Name,
			LabelPodUID: string(pod.UID), LabelContainer: c.Name,
			LabelRestartCount: strconv.Itoa(int(in.restarts)),
		},
	}
	for _, kv := range in.env {
		spec.Env = append(spec.Env, instances.EnvVar{Name: kv[0], Value: kv[1]})
	}
	// WASI has no working directory; PWD is what Go's wasip1 runtime (and
	// other toolchains that follow it) resolve relative paths against.
	if wd := c.WorkingDir; wd != "" && !hasEnv(in.env, "PWD") {
		spec.Env = append(spec.Env, instances.EnvVar{Name: "PWD", Value: wd})
	}
	for _, m := range c.VolumeMounts {
		dir, ok := in.volumes[m.Name]
		if !ok {
			continue
		}
		host := dir
		if m.SubPath != "" {
			var err error
			if host, err = subPath(dir, m.SubPath); err != nil {
				return instances.Spec{}, err
			}
		}
		spec.Preopens = append(spec.Preopens, instances.Preopen{HostPath: host, GuestPath: m.MountPath, ReadOnly: m.ReadOnly || readOnlyVolume(pod, m.Name)})
	}
	handler, err := handlerOf(pod, c)
	if err != nil {
		return instances.Spec{}, err
	}
	spec.Handler = handler
	if mem, ok := c.Resources.Limits[v1.ResourceMemory]; ok {
		spec.MemoryLimitBytes = mem.Value()
	}
	if cpu, ok := c.Resources.Limits[v1.ResourceCPU]; ok {
		// Enforced by executors started with --cpu-cgroup (a CFS quota on
		// the instance's thread); others accept it and log that they do not.
		spec.CPULimitMillis = cpu.MilliValue()
	}
	return spec, nil
}

// attempt is the restart count an instance was created for: its label, or
// for an instance of an older node agent, which did not label it, the
// number its ID ends with. ok is false for an instance that is neither.
func attempt(pod *v1.Pod, container string, in instances.Instance) (n int32, ok bool) {
	if s, found := in.Spec.Labels[LabelRestartCount]; found {
		v, err := strconv.ParseInt(s, 10, 32)
		return int32(v), err == nil && v >= 0
	}
	rest, found := strings.CutPrefix(in.ID, fmt.Sprintf("%s-%s-", pod.UID, container))
	if !found {
		return 0, false
	}
	v, err := strconv.ParseInt(rest, 10, 32)
	return int32(v), err == nil && v >= 0
}

func hasEnv(env [][2]string, name string) bool {
	for _, kv := range env {
		if kv[0] == name {
			return true
		}
	}
	return false
}

// argv maps a container to WASI argv: command replaces the whole argv
// (command[0] is argv[0]) and args follow; with no command, argv[0] is the
// container's name.
func argv(c *v1.Container) []string {
	if len(c.Command) > 0 {
		return append(append([]string{}, c.Command...), c.Args...)
	}
	return append([]string{c.Name}, c.Args...)
}

// subPath makes the directory sub inside the volume at dir without
// following a symlink: a module may have replaced any part of it by a link
// since the last start (the executor checks again when it opens it).
func subPath(dir, sub string) (string, error) {
	clean := filepath.Clean(sub)
	if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("subPath %q must be a relative path inside the volume", sub)
	}
	if err := beneath.MkdirAll(dir, clean, 0o750); err != nil {
		if errors.Is(err, beneath.ErrEscape) {
			return "", fmt.Errorf("subPath %q passes through a symbolic link, which is refused: replace the link in the volume by a directory", sub)
		}
		return "", fmt.Errorf("subPath %q: %w", sub, err)
	}
	if err := shareSubPath(dir, clean); err != nil {
		return "", fmt.Errorf("subPath %q: %w", sub, err)
	}
	return filepath.Join(dir, clean), nil
}
