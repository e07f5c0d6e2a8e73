module github.com/defendergw/gateway

go 1.26.8

require (
	github.com/caarlos0/env/v11 v11.4.2
	github.com/elazarl/goproxy v1.9.2
	github.com/miekg/dns v1.1.73
	go.uber.org/goleak v1.3.0
	go.yaml.in/yaml/v3 v3.0.6
	golang.org/x/crypto v0.58.0
	golang.org/x/net v0.62.0
	golang.org/x/sync v0.24.0
	golang.org/x/time v0.16.0
)

require (
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)
