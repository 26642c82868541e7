// Command depotgo builds a Dockerfile through opendepot with the official Go SDK (depot-go), as its README
// shows: build.NewBuild, machine.Acquire, Connect, a Dockerfile solve on the BuildKit client, Finish.
// It reads DEPOT_API_URL, DEPOT_TOKEN and DEPOT_PROJECT_ID, takes the context directory as its argument,
// prints one line per completed step ("step cached|done <name>"), then "build <id> ok" or fails.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/depot/depot-go/build"
	"github.com/depot/depot-go/machine"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/moby/buildkit/client"
)

func main() {
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(contextDir string) (err error) {
	ctx := context.Background()
	project := os.Getenv("DEPOT_PROJECT_ID")
	b, err := build.NewBuild(ctx, &cliv1.CreateBuildRequest{
		ProjectId: project,
		Options:   []*cliv1.BuildOptions{{Command: cliv1.Command_COMMAND_BUILD, Tags: []string{"depot-go-test"}}},
	}, os.Getenv("DEPOT_TOKEN"))
	if err != nil {
		return fmt.Errorf("new build: %w", err)
	}
	defer func() { b.Finish(err) }()

	m, err := machine.Acquire(ctx, b.ID, b.Token, "amd64")
	if err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	defer m.Release()

	connectCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c, err := m.Connect(connectCtx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}

	statuses := make(chan *client.SolveStatus)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for status := range statuses {
			for _, v := range status.Vertexes {
				if v.Completed != nil {
					state := "done"
					if v.Cached {
						state = "cached"
					}
					fmt.Printf("step %s %s\n", state, v.Name)
				}
			}
		}
	}()
	_, err = c.Solve(ctx, nil, client.SolveOpt{
		Frontend:  "dockerfile.v0",
		LocalDirs: map[string]string{"context": contextDir, "dockerfile": contextDir},
	}, statuses)
	<-done
	if err != nil {
		return fmt.Errorf("solve: %w", err)
	}
	fmt.Printf("build %s ok\n", b.ID)
	return nil
}
