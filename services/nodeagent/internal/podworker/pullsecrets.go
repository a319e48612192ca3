package podworker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// pullCredentials reads a pod's imagePullSecrets (kubernetes.io/dockerconfigjson
// or the older dockercfg) into credentials by registry host. A secret that
// cannot be read is reported, since the pull would then fail with a less
// helpful "unauthorized".
func pullCredentials(ctx context.Context, client kubernetes.Interface, pod *v1.Pod) (map[string]regcache.Credentials, error) {
	if len(pod.Spec.ImagePullSecrets) == 0 {
		return nil, nil
	}
	creds := map[string]regcache.Credentials{}
	for _, ref := range pod.Spec.ImagePullSecrets {
		s, err := client.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("imagePullSecret %q: %w", ref.Name, err)
		}
		if err := parseDockerConfig(s, creds); err != nil {
			return nil, fmt.Errorf("imagePullSecret %q: %w", ref.Name, err)
		}
	}
	return creds, nil
}

type dockerAuth struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

func parseDockerConfig(s *v1.Secret, into map[string]regcache.Credentials) error {
	var auths map[string]dockerAuth
	switch s.Type {
	case v1.SecretTypeDockerConfigJson:
		var cfg struct {
			Auths map[string]dockerAuth `json:"auths"`
		}
		if err := json.Unmarshal(s.Data[v1.DockerConfigJsonKey], &cfg); err != nil {
			return fmt.Errorf("parse %s: %w", v1.DockerConfigJsonKey, err)
		}
		auths = cfg.Auths
	case v1.SecretTypeDockercfg:
		if err := json.Unmarshal(s.Data[v1.DockerConfigKey], &auths); err != nil {
			return fmt.Errorf("parse %s: %w", v1.DockerConfigKey, err)
		}
	default:
		return fmt.Errorf("type %q is not a docker config secret", s.Type)
	}
	for host, a := range auths {
		if a.Auth != "" && a.Username == "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return fmt.Errorf("auth for %s: %w", host, err)
			}
			a.Username, a.Password, _ = strings.Cut(string(raw), ":")
		}
		into[registryHost(host)] = regcache.Credentials{
			Username: a.Username, Password: a.Password,
			IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken,
		}
	}
	return nil
}

// registryHost reduces a docker config key ("https://host:port/v1/") to host:port.
func registryHost(key string) string {
	key = strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	host, _, _ := strings.Cut(key, "/")
	return host
}
