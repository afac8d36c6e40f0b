from facemtl.cli import main

raise SystemExit(main())
