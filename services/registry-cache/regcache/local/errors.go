package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// originError turns what oras-go and net/http return into the regcache
// sentinels, with a message that says what to do.
func originError(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range []error{
		regcache.ErrInvalidReference, regcache.ErrNotFound, regcache.ErrUnauthorized, regcache.ErrNotWasm,
		regcache.ErrDigestMismatch, regcache.ErrTooLarge, regcache.ErrUnavailable,
		context.Canceled, context.DeadlineExceeded,
	} {
		if errors.Is(err, s) {
			return err
		}
	}
	var resp *errcode.ErrorResponse
	if errors.As(err, &resp) {
		switch {
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: the registry refused access (%d %s); check the pull credentials (imagePullSecrets)",
				regcache.ErrUnauthorized, resp.StatusCode, http.StatusText(resp.StatusCode))
		case resp.StatusCode == http.StatusNotFound:
			return notFound()
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
			return fmt.Errorf("%w: the registry answered %d %s; retry later", regcache.ErrUnavailable, resp.StatusCode, http.StatusText(resp.StatusCode))
		}
		return fmt.Errorf("the registry answered %d: %w", resp.StatusCode, err)
	}
	switch {
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return fmt.Errorf("%w: the registry wants credentials and none were given for this host; add an image pull secret", regcache.ErrUnauthorized)
	case errors.Is(err, errdef.ErrNotFound):
		return notFound()
	case errors.Is(err, errdef.ErrSizeExceedsLimit):
		return fmt.Errorf("%w: %v", regcache.ErrTooLarge, err)
	case errors.Is(err, content.ErrMismatchedDigest):
		return fmt.Errorf("%w: %v", regcache.ErrDigestMismatch, err)
	}
	var uerr *url.Error
	var nerr net.Error
	if errors.As(err, &uerr) || errors.As(err, &nerr) {
		return fmt.Errorf("%w: %v; check the registry address and that it is up (for TLS: the CA file; for plain HTTP: the insecure registries)",
			regcache.ErrUnavailable, err)
	}
	return err
}

func notFound() error {
	return fmt.Errorf("%w: the repository or tag does not exist in the registry; check the image reference", regcache.ErrNotFound)
}
