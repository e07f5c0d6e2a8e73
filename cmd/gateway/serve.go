package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/defendergw/gateway/internal/config"
	"github.com/defendergw/gateway/internal/gateway"
)

// serve is "gateway serve": the environment, then the gateway's life.
func serve(stderr io.Writer) int {
	cfg, unknown, err := config.Load(config.EnvironMap())
	if err != nil {
		fmt.Fprintf(stderr, "gateway: configuration: %v\n", err)
		return 2
	}
	logger := cfg.NewLogger(os.Stderr)
	for _, k := range unknown {
		logger.Warn("unknown setting ignored (typo?)", "variable", k)
	}
	g, err := gateway.New(gateway.Options{Config: cfg, Logger: logger, Version: buildVersion()})
	if err != nil {
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 2
	}
	if err := g.Run(context.Background()); err != nil {
		logger.Error("gateway stopped", "error", err.Error())
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 1
	}
	return 0
}
